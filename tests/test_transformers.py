"""crossent.transformers.patch: a Hugging Face causal LM's training loss from
linear_cross_entropy, equal to the stock loss and its gradients (float64, 1e-10) on tiny models
built from a config in code (no download): Llama, Qwen2, Qwen3, Mistral, Gemma 2 and 3
(soft-capped), GPT-2 (tied embeddings), a PEFT LoRA model, and a few Trainer steps with
gradient accumulation."""

from __future__ import annotations

import copy
import inspect

import pytest
from array_api_compat import is_torch_namespace
from conftest import XP

if not is_torch_namespace(XP):
    pytest.skip("Hugging Face models are torch modules", allow_module_level=True)

import torch

transformers = pytest.importorskip("transformers")

from crossent.transformers import patch, unpatch  # noqa: E402

V = 64
SMALL = {"vocab_size": V, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2}
HEADS = {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}


def _model(kind: str, **config):
    t = transformers
    torch.manual_seed(0)
    if kind == "llama":
        model = t.LlamaForCausalLM(t.LlamaConfig(**SMALL, **HEADS, **config))
    elif kind == "qwen2":
        model = t.Qwen2ForCausalLM(t.Qwen2Config(**SMALL, **HEADS, **config))
    elif kind == "qwen3":
        model = t.Qwen3ForCausalLM(t.Qwen3Config(**SMALL, **HEADS, **config))
    elif kind == "mistral":
        model = t.MistralForCausalLM(t.MistralConfig(**SMALL, **HEADS, **config))
    elif kind == "gemma2":
        cfg = t.Gemma2Config(**SMALL, **HEADS, final_logit_softcapping=2.0, **config)
        model = t.Gemma2ForCausalLM(cfg)
    elif kind == "gemma3":
        cfg = t.Gemma3TextConfig(**SMALL, **HEADS, final_logit_softcapping=2.0, **config)
        model = t.Gemma3ForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = t.GPT2Config(
            vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0,
            eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **config,
        )  # fmt: skip
        model = t.GPT2LMHeadModel(cfg)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return model


KINDS = ["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "gpt2"]


def _batch(seed=1, batch=3, length=9):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, V, (batch, length), generator=g)
    labels = input_ids.clone()
    labels[0, :4] = -100  # a prompt
    labels[-1, -2:] = -100  # padding
    return input_ids, labels


def _stock_loss(logits, labels, num_items_in_batch=None, shift_labels=None, **_):
    """transformers' ForCausalLMLoss but for its upcast to float32: the stock loss in the
    model's own float64, the oracle at 1e-10."""
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, V), shift_labels.reshape(-1), reduction=reduction
    )
    return loss if num_items_in_batch is None else loss / num_items_in_batch


def _loss_and_grads(model, stock=False, **kwargs):
    if stock:
        # the stock loss, checked against transformers' own at float32's precision
        own = model(**kwargs)
        call = {k: v for k, v in kwargs.items() if k not in ("labels", "shift_labels")}
        out = model(**call)
        out.loss = _stock_loss(out.logits, **kwargs)
        torch.testing.assert_close(own.loss, out.loss.float(), rtol=1e-6, atol=1e-6)
    else:
        out = model(**kwargs)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.loss, params)
    return out, grads


def _assert_same(a, b, rtol=1e-10, atol=1e-12):
    (out_a, grads_a), (out_b, grads_b) = a, b
    torch.testing.assert_close(out_a.loss, out_b.loss, rtol=rtol, atol=atol)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=rtol, atol=atol)


def _pair(kind, **config):
    stock = _model(kind, **config).double().train()
    patched = patch(copy.deepcopy(stock))
    return stock, patched


@pytest.mark.parametrize("kind", KINDS)
def test_loss_and_gradients_equal_the_stock_loss(kind):
    stock, patched = _pair(kind)
    input_ids, labels = _batch()
    for extra in ({}, {"num_items_in_batch": torch.tensor(11)}):
        ours = _loss_and_grads(patched, input_ids=input_ids, labels=labels, **extra)
        theirs = _loss_and_grads(stock, True, input_ids=input_ids, labels=labels, **extra)
        _assert_same(ours, theirs)
        assert ours[0].logits is None
        assert theirs[0].logits.shape == (*input_ids.shape, V)


def test_shift_labels_and_logits_to_keep_as_the_stock_loss():
    stock, patched = _pair("llama")
    input_ids, labels = _batch()
    shift_labels = torch.roll(labels, -1, dims=1)
    shift_labels[:, -1] = -100
    kwargs = {"input_ids": input_ids, "labels": labels, "shift_labels": shift_labels}
    _assert_same(_loss_and_grads(patched, **kwargs), _loss_and_grads(stock, True, **kwargs))
    kept = {"input_ids": input_ids, "labels": labels[:, -4:], "logits_to_keep": 4}
    _assert_same(_loss_and_grads(patched, **kept), _loss_and_grads(stock, True, **kept))


def test_an_attention_mask_and_a_padded_batch():
    stock, patched = _pair("qwen3")
    input_ids, labels = _batch()
    mask = torch.ones_like(input_ids)
    mask[2, -2:] = 0
    kwargs = {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
    _assert_same(_loss_and_grads(patched, **kwargs), _loss_and_grads(stock, True, **kwargs))


def test_evaluation_generate_and_return_logits_are_the_model_s_own():
    stock, patched = _pair("llama")
    input_ids, labels = _batch()
    asked = patched(input_ids=input_ids, labels=labels, return_logits=True)
    expected = stock(input_ids=input_ids, labels=labels)
    torch.testing.assert_close(asked.logits, expected.logits)
    torch.testing.assert_close(asked.loss, expected.loss)
    stock.eval()
    patched.eval()
    out = patched(input_ids=input_ids, labels=labels)
    torch.testing.assert_close(out.logits, stock(input_ids=input_ids).logits)
    prompt = input_ids[:1, :3]
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(patched.generate(prompt, **settings), stock.generate(prompt, **settings))


def test_token_accuracy():
    stock, patched = _pair("gemma2")
    patch(patched, token_accuracy=True)  # patching again replaces the patch
    input_ids, labels = _batch()
    with torch.no_grad():
        logits = stock(input_ids=input_ids).logits
    target = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    kept = target != -100
    expected = (logits.argmax(-1) == target)[kept].double().mean()
    out = patched(input_ids=input_ids, labels=labels)
    torch.testing.assert_close(out.token_accuracy.double(), expected)
    assert not out.token_accuracy.requires_grad


@pytest.mark.filterwarnings("ignore:.is_gradient_checkpointing. is deprecated:FutureWarning")
def test_peft_lora_model():
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    stock = peft.get_peft_model(_model("llama").double().train(), config)
    patched = patch(copy.deepcopy(stock))
    input_ids, labels = _batch()
    ours = _loss_and_grads(patched, input_ids=input_ids, labels=labels)
    theirs = _loss_and_grads(stock, True, input_ids=input_ids, labels=labels)
    assert ours[0].logits is None
    _assert_same(ours, theirs)


def test_unpatch_and_refusals():
    model = _model("llama")
    stock_forward = type(model).forward
    assert unpatch(patch(model)).forward.__func__ is stock_forward
    with pytest.raises(ValueError, match="logit_scale"):
        patch(transformers.CohereForCausalLM(transformers.CohereConfig(**SMALL, **HEADS)))
    model.lm_head = torch.nn.Identity()
    with pytest.raises(TypeError, match=r"torch\.nn\.Linear output embeddings"):
        patch(model)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self):
        self.rows = [_batch(seed, batch=1, length=7 + seed % 3) for seed in range(8)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        input_ids, labels = self.rows[i]
        return {"input_ids": input_ids[0], "labels": labels[0]}


def _pad(rows):
    length = max(len(r["input_ids"]) for r in rows)
    out = {"input_ids": [], "labels": [], "attention_mask": []}
    for r in rows:
        gap = length - len(r["input_ids"])
        out["input_ids"].append(torch.nn.functional.pad(r["input_ids"], (0, gap)))
        out["labels"].append(torch.nn.functional.pad(r["labels"], (0, gap), value=-100))
        out["attention_mask"].append(
            torch.nn.functional.pad(torch.ones_like(r["labels"]), (0, gap))
        )
    return {k: torch.stack(v) for k, v in out.items()}


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_trainer_steps_equal_the_stock_run(tmp_path):
    """Four optimizer steps of two accumulated batches each (so num_items_in_batch), padded
    batches of unequal lengths: the same losses and the same weights (SGD: Adam's steps
    would magnify the float32 rounding of the stock run)."""
    runs = []
    for patched in (False, True):
        model = _model("llama").double()
        if patched:
            patch(model)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / str(patched)), max_steps=4, per_device_train_batch_size=1,
            gradient_accumulation_steps=2, learning_rate=0.5, optim="sgd", logging_steps=1,
            report_to=[], use_cpu=True, save_strategy="no", seed=0, data_seed=0,
            dataloader_num_workers=0,
        )  # fmt: skip
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=_Tokens(), data_collator=_pad
        )
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    (losses_stock, weights_stock), (losses_ours, weights_ours) = runs
    assert len(losses_ours) == 4
    assert losses_stock[-1] < losses_stock[0]  # it trained
    # transformers computes the stock loss in float32 (it casts the logits to it, float64 ones
    # too): its run is float32's precision; the float64 oracle at 1e-10 is in the tests above
    torch.testing.assert_close(losses_ours, losses_stock, rtol=1e-6, atol=1e-6)
    for a, b in zip(weights_ours, weights_stock, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_a_bfloat16_model_s_loss_is_float32_as_the_stock_one():
    stock = _model("llama").to(torch.bfloat16).train()
    patched = patch(copy.deepcopy(stock))
    input_ids, labels = _batch()
    ours = patched(input_ids=input_ids, labels=labels).loss
    theirs = stock(input_ids=input_ids, labels=labels).loss
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=0)
    ours.backward()
    assert patched.lm_head.weight.grad.dtype == torch.bfloat16


def test_positional_labels_and_return_dict_false():
    stock, patched = _pair("llama")
    input_ids, labels = _batch()
    expected = _loss_and_grads(stock, True, input_ids=input_ids, labels=labels)
    names = list(inspect.signature(patched.forward).parameters)
    by_position = [None] * (names.index("labels") + 1)
    by_position[names.index("input_ids")] = input_ids
    by_position[names.index("labels")] = labels
    out = patched(*by_position)
    assert out.logits is None
    torch.testing.assert_close(out.loss, expected[0].loss, rtol=1e-10, atol=0)
    as_tuple = patched(input_ids=input_ids, labels=labels, return_dict=False)
    stock_tuple = stock(input_ids=input_ids, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert len(as_tuple) == len(stock_tuple) - 1  # no logits
    torch.testing.assert_close(as_tuple[0], expected[0].loss, rtol=1e-10, atol=0)


@pytest.mark.filterwarnings(
    "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning",
    "ignore:.*should not be instantiated:DeprecationWarning",
)
def test_a_compiled_patched_model():
    """Dynamo breaks the graph at the capture (a hook registered in the call) and reads the
    hidden states as an input of the next graph, where it warns of their .grad (and of an
    autograd Function it instantiates itself)."""
    stock, patched = _pair("qwen3")
    input_ids, labels = _batch()
    compiled = torch.compile(patched, backend="aot_eager")
    for seed in (1, 2):  # a second call runs the compiled code
        input_ids, labels = _batch(seed)
        out = compiled(input_ids=input_ids, labels=labels)
        assert out.logits is None
        expected = _loss_and_grads(stock, True, input_ids=input_ids, labels=labels)
        _assert_same(_loss_and_grads(compiled, input_ids=input_ids, labels=labels), expected)
    assert not patched.lm_head._forward_pre_hooks  # the capture is gone after each call


def test_the_head_s_other_hooks_and_other_callers_are_left_alone():
    accelerate = pytest.importorskip("accelerate")

    class Count(accelerate.hooks.ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Count.calls += 1
            return args, kwargs

    stock, patched = _pair("llama")
    accelerate.hooks.add_hook_to_module(patched.lm_head, Count())
    input_ids, labels = _batch()
    expected = _loss_and_grads(stock, True, input_ids=input_ids, labels=labels)
    _assert_same(_loss_and_grads(patched, input_ids=input_ids, labels=labels), expected)
    assert Count.calls == 1
    assert "forward" in vars(patched.lm_head)  # accelerate's wrapper is still there
    hidden = torch.randn(2, 16, dtype=torch.float64)
    torch.testing.assert_close(patched.lm_head(hidden), stock.lm_head(hidden))


def test_a_replaced_head_or_a_custom_loss_takes_the_model_s_own_loss():
    stock, patched = _pair("llama")
    input_ids, labels = _batch()
    expected = stock(input_ids=input_ids, labels=labels).loss

    class Linear(torch.nn.Linear):
        pass

    head = Linear(16, V, bias=False, dtype=torch.float64)
    head.weight = patched.lm_head.weight
    patched.lm_head = head
    with pytest.warns(RuntimeWarning, match="now a Linear, not a torch.nn.Linear"):
        out = patched(input_ids=input_ids, labels=labels)
    assert out.logits is not None
    torch.testing.assert_close(out.loss, expected)

    _, patched = _pair("llama")
    patched.loss_function = lambda logits, labels, vocab_size, **kwargs: logits.sum() * 0
    with pytest.warns(RuntimeWarning, match="loss_function of its own"):
        assert patched(input_ids=input_ids, labels=labels).loss == 0


def test_data_parallel_replicas_are_bound_to_themselves():
    stock, patched = _pair("llama")
    replica = patched._replicate_for_data_parallel()
    assert replica.forward.__self__ is replica
    assert replica._crossent_original_forward.__self__ is replica
    # a replica's parameters are set by DataParallel; here it shares the model's modules
    input_ids, labels = _batch()
    expected = _loss_and_grads(stock, True, input_ids=input_ids, labels=labels)
    _assert_same(_loss_and_grads(replica, input_ids=input_ids, labels=labels), expected)


def test_a_text_config_that_scales_the_logits_is_refused():
    model = _model("llama")
    model.config.text_config = transformers.CohereConfig(**SMALL, **HEADS, logit_scale=0.5)
    assert model.config.get_text_config() is model.config.text_config
    with pytest.raises(ValueError, match="logit_scale"):
        patch(model)
