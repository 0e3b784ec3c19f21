"""BBQTokenizer: L_Rec against a per-position loop, ablation switches, missing modalities."""

import torch
import torch.nn.functional as F

from mscg_lightning.stages.bbq.model import BBQTokenizer


def _model(**kwargs) -> BBQTokenizer:
    torch.manual_seed(0)
    args = dict(
        latent_dim=4, hidden_dims=[8], levels=2, codebook_size=3, seq_inner=8, dead_code_threshold=0
    )
    model = BBQTokenizer(20, {"text": 6, "image": 5}, **{**args, **kwargs})
    model.set_features("text", torch.arange(20), torch.randn(20, 6))
    model.set_features("image", torch.arange(15), torch.randn(15, 5))  # items 15.. lack images
    return model


def _batch():
    g = torch.Generator().manual_seed(1)
    history = torch.randint(0, 20, (4, 5), generator=g)
    targets = torch.randint(0, 20, (4, 5), generator=g)
    history[0, :2] = targets[0, :2] = -1
    return history, targets


def test_rec_loss_equals_per_position_infonce_loop():
    model = _model().eval()
    history, targets = _batch()
    items = torch.unique(torch.cat([history.flatten(), targets.flatten()]))
    items = items[items >= 0]
    v = torch.randn(len(items), model.latent_dim * 3)
    loss = model.rec_loss(items, v, history, targets)
    vec = {int(i): v[n] for n, i in enumerate(items)}
    candidates = sorted({int(t) for t in targets.flatten() if t >= 0})
    terms = []
    for b in range(history.shape[0]):
        pad = history[b : b + 1] < 0
        seq = torch.stack([vec.get(int(i), torch.zeros(v.shape[1])) for i in history[b]])
        states = model.sequence.encode_embeddings(seq[None] * (~pad)[..., None], pad)[0]
        for t in range(history.shape[1]):
            if targets[b, t] < 0:
                continue
            sims = torch.stack([F.cosine_similarity(states[t], vec[c], dim=0) for c in candidates])
            label = candidates.index(int(targets[b, t]))
            terms.append(-F.log_softmax(sims / model.tau, 0)[label])
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)


def test_total_loss_follows_beta_gamma_and_the_terms():
    history, targets = _batch()
    model = _model(beta=0.5, gamma=2.0, recon_weight=3.0, mim_clamp=False).train()
    out = model(history, targets)
    loss = out.losses
    total = 3.0 * loss["recon"] + loss["rq"] + 0.5 * loss["rec"] + 2.0 * loss["mim"]
    assert torch.allclose(out.loss, total)
    assert torch.allclose(loss["mim"], loss["mim_text"] + loss["mim_image"])


def test_without_l_rec_the_sequence_encoder_gets_no_gradient():
    history, targets = _batch()
    model = _model(beta=0.0).train()
    model(history, targets).loss.backward()
    grads = [p.grad for p in model.sequence.parameters()]
    assert all(g is None or float(g.abs().sum()) == 0 for g in grads)
    model = _model(beta=1.0).train()
    model(history, targets).loss.backward()
    assert any(
        p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.sequence.parameters()
    )


def test_mim_clamp_keeps_a_negative_estimate_out_of_the_loss():
    history, targets = _batch()
    out = _model(gamma=1.0).train()(history, targets)  # mim_clamp is on by default
    raw = [out.losses[f"mim_{m}"] for m in ("text", "image")]
    assert torch.allclose(out.losses["mim"], sum(r.clamp(min=0) for r in raw))


def test_missing_image_items_are_left_out_of_the_reconstruction():
    model = _model().train()
    x, present = model.features("image", torch.tensor([3, 17]))
    assert present.tolist() == [True, False]
    assert torch.allclose(x[1], model.features_image[:15].mean(0))
    # a batch of items without images has no image reconstruction term; L_recon = text only
    history = torch.tensor([[16, 17]])
    targets = torch.tensor([[17, 18]])
    out = model(history, targets)
    items = torch.tensor([16, 17, 18])
    z, spec = model.latents(items)
    q = model.quantizer.decode(model.quantizer.encode(z))
    x_text, _ = model.features("text", items)
    rebuilt = model.decoders["text"](torch.cat([q[:, 1], spec["text"]], -1))
    assert torch.allclose(out.losses["recon"], ((rebuilt - x_text) ** 2).mean(-1).mean(), atol=1e-5)


def test_catalogue_codes_and_vectors_agree():
    model = _model().train()
    model(*_batch())  # initialises the codebooks
    codes, v = model.encode_catalogue(chunk=7)
    assert codes.shape == (20, 3, 2) and v.shape == (20, 12)
    assert torch.allclose(v, model.quantizer.decode(codes).flatten(1))
    top = model.recommend(torch.tensor([[-1, 3, 4]]), v, 5)
    assert top.shape == (1, 5)
