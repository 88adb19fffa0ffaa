"""Key-value memory: quantisation, similarities, sharpening and reads."""

import math

import pytest
import torch

from batmann.errors import ConfigError
from batmann.memory import (
    KEY_MODES,
    SIM_CALS,
    KeyMemory,
    class_logits,
    cosine_similarity_matrix,
    inference_similarity,
    matching_bits_similarity,
    one_hot_values,
    quantize_keys,
    sharpened_attention,
    similarity,
    softabs,
    softabs_seed,
)


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_softabs_matches_the_paper_formula():
    a = torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0])
    expected = [_sig(10 * (v - 0.5)) + _sig(10 * (-v - 0.5)) for v in a.tolist()]
    torch.testing.assert_close(softabs(a), torch.tensor(expected))
    assert softabs(torch.tensor(0.0)).item() == pytest.approx(2 / (1 + math.exp(5)), rel=1e-6)
    assert softabs(torch.tensor(1.0)).item() == pytest.approx(_sig(5) + _sig(-15), rel=1e-6)
    torch.testing.assert_close(softabs(a), softabs(-a))  # symmetric
    assert softabs(a, beta=2.0)[2].item() == pytest.approx(2 * _sig(-1.0), rel=1e-6)


def test_seed_softabs_and_its_plus_one_form_give_the_same_attention():
    a = torch.tensor([-0.3, 0.0, 0.7])
    expected = [math.exp(10 * (v - 0.5)) + math.exp(10 * (-v - 0.5)) for v in a.tolist()]
    torch.testing.assert_close(softabs_seed(a), torch.tensor(expected))
    plus_one = torch.exp(10 * (a - 0.5) + 1) + torch.exp(10 * (-a - 0.5) + 1)
    torch.testing.assert_close(plus_one / plus_one.sum(), softabs_seed(a) / softabs_seed(a).sum())


def _seed_sim_comp(q, k, sharpen):
    """A literal transcription of the seed's sim_comp / sim_comp_softmax maths."""
    inner = q @ k.t()
    norm = k.norm(dim=1).unsqueeze(0) * q.norm(dim=1).unsqueeze(1)
    kk = inner / (norm + 1e-8)
    s = sharpen(kk)
    w = s / s.sum(1, keepdim=True)
    return (w - w.mean([0, 1], keepdim=True)) / w.std([0, 1], keepdim=True)


def test_training_attentions_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 16, generator=g), torch.randn(10, 16, generator=g)
    cos = torch.nn.functional.cosine_similarity(q[:, None], k[None], dim=2)
    torch.testing.assert_close(cosine_similarity_matrix(q, k), cos, atol=1e-6, rtol=1e-5)

    w = sharpened_attention(q, k)  # default: cos_softabs, paper form, sums to 1
    sa = softabs(cos)
    torch.testing.assert_close(w, sa / sa.sum(1, keepdim=True), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w.sum(1), torch.ones(6))

    seed = _seed_sim_comp(q, k, lambda x: 1 / torch.exp(-(10 * (x - 0.5))) + 1 / torch.exp(-(10 * (-x - 0.5))))
    torch.testing.assert_close(sharpened_attention(q, k, "cos_softabs_seed"), seed, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sharpened_attention(q, k, "cos_softmax"), _seed_sim_comp(q, k, torch.exp),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sharpened_attention(q, k, "dot_abs"), (q @ k.t()).abs() / 16)

    st = sharpened_attention(q, k, "cos_softabs", standardize=True)
    assert st.mean().abs().item() < 1e-6 and st.std().item() == pytest.approx(1.0, rel=1e-5)
    unst = sharpened_attention(q, k, "cos_softmax", standardize=False)
    torch.testing.assert_close(unst.sum(1), torch.ones(6))


def test_quantize_keys():
    x = torch.tensor([[0.3, -2.0, 0.0, 5.0]])
    assert quantize_keys(x, "real") is x
    assert quantize_keys(x, "bipolar").tolist() == [[1.0, -1.0, -1.0, 1.0]]
    assert quantize_keys(x, "binary").tolist() == [[1.0, 0.0, 0.0, 1.0]]
    for mode in ("bipolar", "binary"):  # idempotent
        once = quantize_keys(x, mode)
        assert torch.equal(quantize_keys(once, mode), once)
    v = torch.tensor([0.5, -0.5], requires_grad=True)
    quantize_keys(v, "binary", ste=True).sum().backward()
    assert v.grad.tolist() == [0.5, 0.5]  # d/dx (sign(x) + 1) / 2 through the STE
    w = torch.tensor([0.5, -2.0, 1.0, -1.5], requires_grad=True)
    quantize_keys(w, "bipolar", ste=True, clip=1.0).sum().backward()
    assert w.grad.tolist() == [1.0, 0.0, 1.0, 0.0]  # hardtanh STE: no gradient where |x| > clip
    with pytest.raises(ConfigError):
        quantize_keys(x, "ternary")


def test_bipolar_similarity_by_hand():
    q = torch.tensor([[0.3, -2.0, 5.0, 0.1]])  # -> [1, -1, 1, 1]
    k = torch.tensor([[1.0, -1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [-1.0, 1.0, -1.0, -1.0], [2.0, 3.0, -1.0, -4.0]])
    # dots with [1,-1,1,1]: 4, 2, -4, and [1,1,-1,-1] -> -2; divided by d = 4
    assert inference_similarity(q, k, "bipolar").tolist() == [[1.0, 0.5, -1.0, -0.5]]
    assert similarity(quantize_keys(q, "bipolar"), k[:3], "dot").tolist() == [[1.0, 0.5, -1.0]]


def test_binary_similarity_by_hand():
    q = torch.tensor([[0.3, -2.0, 5.0, 0.1]])  # -> [1, 0, 1, 1]
    k = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    # both quantised to {0, 1}: dots 3, 3, 0 -> 1/2 + dot / 8
    assert inference_similarity(q, k, "binary").tolist() == [[0.875, 0.875, 0.5]]
    # the Hamming similarity differs: matching bits 4/4, 3/4, 0/4
    qb = quantize_keys(q, "binary")
    assert matching_bits_similarity(qb, k).tolist() == [[1.0, 0.75, 0.0]]
    torch.testing.assert_close(matching_bits_similarity(qb, k), 0.5 + (2 * qb - 1) @ (2 * k - 1).t() / 8)


def test_real_inference_is_cosine_and_unquantised():
    q = torch.tensor([[3.0, 4.0]])
    k = torch.tensor([[3.0, 4.0], [-4.0, 3.0], [6.0, 8.0]])
    torch.testing.assert_close(inference_similarity(q, k, "real"), torch.tensor([[1.0, 0.0, 1.0]]))
    # quantize=False keeps real values in the dot product
    assert inference_similarity(q, k, "bipolar", quantize=False).tolist() == [[12.5, 0.0, 25.0]]


def test_class_logits_and_one_hot():
    att = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 2.0]])
    labels = torch.tensor([0, 1, 1, 2])
    assert one_hot_values(labels, 3).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]]
    torch.testing.assert_close(class_logits(att, labels, 3), torch.tensor([[0.1, 0.5, 0.4], [1.0, 0.0, 2.0]]))
    assert class_logits(att, labels, 4).shape == (2, 4)  # an empty class gets 0
    with pytest.raises(ValueError):
        one_hot_values(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError):
        class_logits(att, labels[:3], 3)


def test_memory_read_on_a_toy_episode():
    """3-way 2-shot: keys are noisy class prototypes; queries are fresh noisy copies."""
    g = torch.Generator().manual_seed(7)
    ways, shots, d = 3, 2, 64
    protos = torch.randn(ways, d, generator=g)
    labels = torch.arange(ways).repeat_interleave(shots)  # class-major
    keys = protos[labels] + 0.3 * torch.randn(ways * shots, d, generator=g)
    q_labels = torch.tensor([2, 0, 1, 1, 0, 2])
    queries = protos[q_labels] + 0.3 * torch.randn(6, d, generator=g)
    mem = KeyMemory(keys, labels, ways)
    assert len(mem) == 6 and mem.dim == d and mem.values.shape == (6, 3)

    for sim_cal in SIM_CALS:
        logits = mem.read(queries, sim_cal)
        assert logits.shape == (6, ways)
        torch.testing.assert_close(logits, class_logits(sharpened_attention(queries, keys, sim_cal), labels, ways))
        assert torch.equal(logits.argmax(1), q_labels), sim_cal
    for mode in KEY_MODES:
        assert torch.equal(mem.predict(queries, mode), q_labels), mode
        if mode != "real":
            stored = mem.quantized(mode)
            torch.testing.assert_close(stored.infer(queries, mode), mem.infer(queries, mode))

    # by hand for one query in bipolar mode: per-class sums of q.k / d
    qb, kb = torch.sign(queries[:1]), torch.sign(keys)
    by_hand = torch.stack([(qb @ kb[2 * c: 2 * c + 2].t()).sum() / d for c in range(ways)])
    torch.testing.assert_close(mem.infer(queries[:1], "bipolar")[0], by_hand)


def test_memory_errors_and_autocast():
    q, k = torch.randn(2, 8), torch.randn(4, 8)
    with pytest.raises(ConfigError) as e:
        sharpened_attention(q, k, "cos_softplus")
    assert "cos_softabs, cos_softabs_seed, cos_softmax, dot_abs" in str(e.value)
    with pytest.raises(ConfigError):
        inference_similarity(q, k, "hamming")
    with pytest.raises(ValueError):
        sharpened_attention(q, torch.randn(4, 7))
    with pytest.raises(ValueError):
        KeyMemory(k, torch.tensor([0, 1, 2]), 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = sharpened_attention(q.bfloat16(), k.bfloat16())
        logits = KeyMemory(k, torch.tensor([0, 0, 1, 1]), 2).read(q)
    assert w.dtype == torch.float32 and logits.dtype == torch.float32
