"""A Hugging Face causal language model's training loss from :func:`crossent.linear_cross_entropy`:
``crossent.transformers.patch(model)``, in one line, and the logits are never made.

See :func:`patch`.
"""

from __future__ import annotations

import inspect
import threading
import types
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from ._linear import linear_cross_entropy

__all__ = ["patch", "unpatch"]

#: Configuration attributes that change the logits after the output embeddings in a way
#: crossent does not follow; a model that sets one is refused.
UNSUPPORTED = ("logit_scale", "logits_scaling", "output_multiplier_scale", "lm_head_multiplier")
_PATCHED = "_crossent_original_forward"


def patch(model: Any, *, token_accuracy: bool = False) -> Any:
    """Compute ``model``'s training loss with :func:`crossent.linear_cross_entropy`.

    ``model`` is a Hugging Face causal language model whose output embeddings
    (``get_output_embeddings()``) are a ``torch.nn.Linear``: Llama, Qwen2 and 3, Mistral,
    Gemma 2 and 3 (with ``final_logit_softcapping``), GPT-2 (tied embeddings) and the others
    built the same way, or a PEFT model of one. Returns ``model``, patched in place.

    A call of the patched model in training mode (``model.train()``) with ``labels`` (or
    ``shift_labels``) runs the model up to its last hidden states and computes the loss from
    them and the output embeddings' weight and bias, a chunk of rows at a time: the logits of
    the batch are never made, and the output's ``logits`` is None (with
    ``return_dict=False``, the tuple has the loss first and no logits). The loss is Hugging
    Face's (``ForCausalLMLoss``): the labels shifted by one position (``shift_labels`` as
    given), ``-100`` (or ``ignore_index``) ignored, the mean over the kept tokens, or their
    sum divided by ``num_items_in_batch`` where the ``Trainer`` passes it (gradient
    accumulation), ``logits_to_keep`` and the final logit soft-capping honoured. It equals
    the stock loss to the rounding of the model's dtype: Hugging Face computes it from
    logits cast to float32, crossent in float32 from the hidden states, and a bfloat16 or
    float16 model gets it rounded once to its dtype, then as float32.

    Everything else is the model's own forward, unchanged: evaluation mode, calls without
    labels, ``generate``, and calls with ``return_logits=True``, which make the logits and
    Hugging Face's loss. A call also takes the model's own loss, with a ``RuntimeWarning``,
    where the output embeddings were replaced after the patch by a module that is not a
    plain ``torch.nn.Linear`` (a LoRA adapter of ``lm_head``: patch the PEFT model instead),
    or where the model was given a ``loss_function`` of its own.

    The patch is per call and per thread (the hidden states are taken by a forward pre-hook
    of the output embeddings that acts in a patched call alone), so the model can be used
    from several threads, replicated by ``torch.nn.DataParallel``, deep-copied, and compiled
    with ``torch.compile``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal language model, or a PEFT model of one.
    token_accuracy : bool, default False
        Also report the share of kept tokens whose label is the logits' argmax, as
        ``output.token_accuracy`` (a 0-d tensor without gradient), as Liger-Kernel and TRL
        log it. It costs one more product of the hidden states with the weight, a chunk of
        rows at a time.

    Returns
    -------
    model
        The same model, patched.

    Raises
    ------
    TypeError
        If the model has no ``torch.nn.Linear`` output embeddings.
    ValueError
        If its configuration (or that of its text model) scales its logits in a way the
        loss does not follow (``logit_scale``, ``logits_scaling``,
        ``output_multiplier_scale``, ``lm_head_multiplier``).

    Examples
    --------
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from crossent.transformers import patch
    >>> config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    >>> model = patch(LlamaForCausalLM(config)).train()
    >>> input_ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    >>> out = model(input_ids=input_ids, labels=input_ids)
    >>> out.logits is None, out.loss.shape
    (True, torch.Size([]))
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = target.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        raise TypeError(
            "model must have torch.nn.Linear output embeddings (get_output_embeddings()), "
            f"got {type(head).__name__}"
        )
    configs = (target.config, _text_config(target.config))
    scaled = [
        a
        for a in UNSUPPORTED
        if any(getattr(config, a, None) not in (None, 1, 1.0) for config in configs)
    ]
    if scaled:
        raise ValueError(
            f"model's configuration sets {', '.join(scaled)}, which scales its logits in a way "
            "crossent.transformers does not follow; the model is left unpatched"
        )
    if hasattr(target, _PATCHED):
        unpatch(target)
    target._crossent_token_accuracy = token_accuracy
    _bind(target, target.forward)
    return model


def _bind(target: Any, original: Any) -> None:
    """``target``'s forward the patched one, around ``original``: bound to the model, so that
    a deep copy of it calls the copy, and with the model's own signature, which the Trainer
    reads (the columns it keeps, num_items_in_batch). torch.nn.DataParallel's replicas are
    bound anew (they copy the model's ``__dict__``, and with it the bound methods)."""
    setattr(target, _PATCHED, original)
    target.forward = types.MethodType(_signed_forward(original), target)
    target._replicate_for_data_parallel = types.MethodType(_replicate, target)


def _replicate(self: Any) -> Any:
    replica = type(self)._replicate_for_data_parallel(self)
    original = self.__dict__[_PATCHED]
    if getattr(original, "__self__", None) is not self:
        raise TypeError(
            "crossent.transformers: torch.nn.DataParallel cannot replicate a patched model "
            "whose forward was wrapped before patch(); patch the model before wrapping it, or "
            "use DistributedDataParallel"
        )
    _bind(replica, original.__func__.__get__(replica))
    return replica


def _signed_forward(original: Any) -> Any:
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _forward(self, *args, **kwargs)

    signature = inspect.signature(original)
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    forward.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_parameter, *signature.parameters.values()]
    )
    forward.__doc__ = original.__doc__
    return forward


def unpatch(model: Any) -> Any:
    """Undo :func:`patch`: the model's own forward again.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A model :func:`patch` patched (one it did not is returned as it is).

    Returns
    -------
    model
        The same model, unpatched.

    Examples
    --------
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from crossent.transformers import patch, unpatch
    >>> config = GPT2Config(vocab_size=32, n_embd=8, n_layer=1, n_head=2, bos_token_id=0,
    ...                     eos_token_id=0)
    >>> model = GPT2LMHeadModel(config)
    >>> unpatch(patch(model)).forward.__func__ is GPT2LMHeadModel.forward
    True
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    original = target.__dict__.pop(_PATCHED, None)
    if original is not None:
        del target.forward  # the instance's; the class's (or an earlier hook's) shows again
        if getattr(original, "__self__", None) is not target:
            target.forward = original
        del target._crossent_token_accuracy
        del target._replicate_for_data_parallel
    return model


_LOCAL = threading.local()  # per thread: the heads whose next input a patched call captures


def _capture_input(head: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """A forward pre-hook of the output embeddings: in a patched training call on this thread,
    keep the hidden states and hand the head no rows (its logits are empty, and whatever
    follows in the model's forward sees them so); otherwise leave the call alone."""
    slot = getattr(_LOCAL, "slots", {}).pop(id(head), None)
    if slot is None:
        return None
    (hidden,) = args
    slot.append(hidden)
    return (hidden[..., :0, :],)


def _forward(self: Any, *args: Any, **kwargs: Any) -> Any:
    original = getattr(self, _PATCHED)
    if args:  # labels and the rest by name, as they were given by position
        bound = inspect.signature(original).bind(*args, **kwargs)
        args, kwargs = (), {}
        for name, value in bound.arguments.items():
            kind = bound.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                args = tuple(value)
            else:
                kwargs[name] = value
    labels = kwargs.get("labels")
    shift_labels = kwargs.get("shift_labels")
    return_logits = kwargs.pop("return_logits", False)
    if not self.training or return_logits or (labels is None and shift_labels is None):
        return original(*args, **kwargs)
    head = self.get_output_embeddings()
    reason = _stock_reason(self, head)
    if reason is not None:
        warnings.warn(
            f"crossent.transformers: {reason}; this call computes the model's own logits and loss",
            RuntimeWarning,
            stacklevel=2,
        )
        return original(*args, **kwargs)

    captured: list[torch.Tensor] = []
    slots = _LOCAL.__dict__.setdefault("slots", {})
    slots[id(head)] = captured
    handle = head.register_forward_pre_hook(_capture_input)
    kwargs["labels"] = None
    kwargs.pop("shift_labels", None)
    try:
        out = original(*args, **kwargs)
    finally:
        handle.remove()
        slots.pop(id(head), None)
    if len(captured) != 1:
        raise RuntimeError(
            "crossent.transformers: the model's forward called its output embeddings "
            f"{len(captured)} times, expected once; unpatch the model (crossent.transformers."
            "unpatch) to train it with its own loss"
        )
    (hidden,) = captured
    ignore_index = kwargs.get("ignore_index", -100)
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    target = shift_labels.reshape(-1).to(head.weight.device)
    rows = hidden.reshape(-1, hidden.shape[-1]).to(head.weight.device)
    num_items = kwargs.get("num_items_in_batch")
    loss = linear_cross_entropy(
        rows,
        head.weight,
        target,
        head.bias,
        ignore_index=ignore_index,
        reduction="mean" if num_items is None else "sum",
        softcap=getattr(_text_config(self.config), "final_logit_softcapping", None),
    )
    if loss.dtype in (torch.float16, torch.bfloat16):
        # transformers' loss is float32; crossent's, computed in float32, comes back rounded
        # once to the model's dtype
        loss = loss.float()
    if num_items is not None:
        if torch.is_tensor(num_items):
            num_items = num_items.to(loss.device)
        loss = loss / num_items
    accuracy = None
    if self._crossent_token_accuracy:
        accuracy = _token_accuracy(rows, head, target, ignore_index)
    if isinstance(out, tuple):
        # return_dict=False: the loss first, as the stock tuple has it, and no logits (a
        # ModelOutput's tuple leaves out the fields that are None)
        return (loss, *out[1:], *(() if accuracy is None else (accuracy,)))
    # a new output: its logits field None, as a model output's fields are without a value
    out = type(out)(**{**{k: v for k, v in out.items() if k != "logits"}, "loss": loss})
    if accuracy is not None:
        out["token_accuracy"] = accuracy
    return out


def _stock_reason(model: Any, head: Any) -> str | None:
    """Why a call of a patched model must take the model's own loss, or None."""
    if type(head) is not torch.nn.Linear:  # a subclass (LoRA, quantized) may not be x @ W.T + b
        return f"its output embeddings are now a {type(head).__name__}, not a torch.nn.Linear"
    if "_loss_function" in vars(model):
        return "the model has a loss_function of its own"
    return None


def _text_config(config: Any) -> Any:
    """The configuration of the language model (that of a composite model's text part)."""
    get = getattr(config, "get_text_config", None)
    return config if get is None else get()


def _token_accuracy(
    rows: torch.Tensor, head: torch.nn.Linear, target: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """The share of kept rows whose label is the argmax of their logits (soft-capping keeps the
    order), a chunk of rows at a time."""
    with torch.no_grad():
        return _count_right(rows, head, target, ignore_index)


def _count_right(
    rows: torch.Tensor, head: torch.nn.Linear, target: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    chunk = max(1, (1 << 26) // max(1, head.weight.shape[0]))  # 64 Mi logits a chunk at most
    right = torch.zeros((), dtype=torch.int64, device=rows.device)
    for start in range(0, rows.shape[0], chunk):
        logits = F.linear(rows[start : start + chunk], head.weight, head.bias)
        labels = target[start : start + chunk]
        right += ((logits.argmax(-1) == labels) & (labels != ignore_index)).sum()
    kept = (target != ignore_index).sum()
    return right.to(torch.float32) / kept.to(torch.float32)
