"""A Hugging Face causal language model's training loss from :func:`crossent.linear_cross_entropy`:
``crossent.transformers.patch(model)``, in one line, and the logits are never made.

See :func:`patch`.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import torch
import torch.nn.functional as F

from ._linear import linear_cross_entropy

__all__ = ["patch", "unpatch"]

#: Configuration attributes that change the logits after the output embeddings in a way
#: crossent does not follow; a model that sets one is refused.
UNSUPPORTED = ("logit_scale", "logits_scaling", "output_multiplier_scale")
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
    the batch are never made, and the output's ``logits`` is None. The loss is Hugging
    Face's (``ForCausalLMLoss``), number for number: the labels shifted by one position
    (``shift_labels`` as given), ``-100`` (or ``ignore_index``) ignored, the mean over the
    kept tokens, or their sum divided by ``num_items_in_batch`` where the ``Trainer`` passes
    it (gradient accumulation), ``logits_to_keep`` and the final logit soft-capping honoured.

    Everything else is the model's own forward, unchanged: evaluation mode, calls without
    labels, ``generate``, and calls with ``return_logits=True``, which make the logits and
    Hugging Face's loss.

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
        If its configuration scales its logits in a way the loss does not follow
        (``logit_scale``, ``logits_scaling``).

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
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(
            "model must have torch.nn.Linear output embeddings (get_output_embeddings()), "
            f"got {type(head).__name__}"
        )
    config = target.config
    scaled = [a for a in UNSUPPORTED if getattr(config, a, None) not in (None, 1, 1.0)]
    if scaled:
        raise ValueError(
            f"model's configuration sets {', '.join(scaled)}, which scales its logits in a way "
            "crossent.transformers does not follow; the model is left unpatched"
        )
    if hasattr(target, _PATCHED):
        unpatch(target)
    original = target.forward
    setattr(target, _PATCHED, original)
    target._crossent_token_accuracy = token_accuracy
    # bound to the model, so that a deep copy of it calls the copy; with the model's own
    # signature, which the Trainer reads (the columns it keeps, num_items_in_batch)
    target.forward = types.MethodType(_signed_forward(original), target)
    return model


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
    return model


def _forward(self: Any, *args: Any, **kwargs: Any) -> Any:
    original = getattr(self, _PATCHED)
    labels = kwargs.get("labels")
    shift_labels = kwargs.get("shift_labels")
    return_logits = kwargs.pop("return_logits", False)
    if not self.training or return_logits or (labels is None and shift_labels is None):
        return original(*args, **kwargs)

    head = self.get_output_embeddings()
    captured: list[torch.Tensor] = []

    def capture(hidden: torch.Tensor) -> torch.Tensor:
        captured.append(hidden)
        return hidden.new_empty((*hidden.shape[:-1], 0))  # what follows sees no logits

    kwargs["labels"] = None
    kwargs.pop("shift_labels", None)
    head.forward = capture
    try:
        out = original(*args, **kwargs)
    finally:
        del head.forward
    (hidden,) = captured
    ignore_index = kwargs.get("ignore_index", -100)
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    target = shift_labels.reshape(-1).to(hidden.device)
    rows = hidden.reshape(-1, hidden.shape[-1])
    num_items = kwargs.get("num_items_in_batch")
    loss = linear_cross_entropy(
        rows,
        head.weight,
        target,
        head.bias,
        ignore_index=ignore_index,
        reduction="mean" if num_items is None else "sum",
        softcap=getattr(self.config, "final_logit_softcapping", None),
    )
    if loss.dtype in (torch.float16, torch.bfloat16):
        # transformers' loss is float32; crossent's, computed in float32, comes back rounded
        # once to the model's dtype
        loss = loss.float()
    if num_items is not None:
        if torch.is_tensor(num_items):
            num_items = num_items.to(loss.device)
        loss = loss / num_items
    # a new output: its logits field None, as a model output's fields are without a value
    out = type(out)(**{**{k: v for k, v in out.items() if k != "logits"}, "loss": loss})
    if self._crossent_token_accuracy:
        out["token_accuracy"] = _token_accuracy(rows, head, target, ignore_index)
    return out


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
