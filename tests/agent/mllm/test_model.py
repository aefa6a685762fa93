"""LLaVA-OneVision + expert on a tiny random model: token counts, layout, batching, cache, scoring."""

from __future__ import annotations

import pytest
import torch

from agent.mllm.chat_format import format_question, suspicion_phrase
from agent.mllm.sequences import ANOMALY, IGNORE_INDEX, PAD, PHRASE, TEXT, VISUAL, anomaly_token_count
from agent.mllm.yes_no import yes_probability_from_logits
from instruct_data.answers import parse_yes_no
from tests.agent.mllm.conftest import random_image

# (image height, width) -> expected AnyRes grid (nH, nW) for the tiny pinpoints of the fixture
GRIDS = {(40, 40): (1, 1), (36, 78): (1, 2), (78, 36): (2, 1), (80, 80): (2, 2), (30, 115): (1, 3)}


def count_tower_calls(model):
    calls = []
    handle = model.core.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize(("size", "grid"), list(GRIDS.items()))
def test_token_counts_for_anyres_grids(tiny_model, size, grid):
    image = random_image(*size, seed=sum(size))
    enc = tiny_model.encode_images([image])[0]
    assert enc.grid_shape == grid
    n_h, n_w = grid
    assert enc.anomaly_embeds.shape[0] == 1 + 4 + 2 * n_h * (2 * n_w + 1) == anomaly_token_count(grid)
    # the usual visual tokens are exactly as many as transformers' processor expands <image> into
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model.llava.name_or_path)
    ids = processor(text="<image>", images=[image], return_tensors="pt")["input_ids"]
    assert int((ids == tiny_model.llava.config.image_token_id).sum()) == enc.visual_embeds.shape[0]
    assert enc.anomaly_map().shape == size


def test_single_crop_count_and_multi_image_prompt(tiny_model):
    images = [random_image(40, 40, 1), random_image(50, 70, 2)]
    inputs = tiny_model.build_inputs([format_question("Compare.", num_images=2)], [images])
    kinds = inputs.token_kinds[0]
    g2 = (40 // 8) ** 2
    assert int((kinds == VISUAL).sum()) == 2 * (g2 + 1)  # base crop + newline per image, as transformers
    # the expert's phrase and tokens follow the first image only (the inspected part, as in training)
    assert int((kinds == ANOMALY).sum()) == 1 + 4 + 1 == anomaly_token_count(None)
    assert int((kinds == PHRASE).sum()) > 0
    kinds = kinds.tolist()
    last_visual = max(i for i, k in enumerate(kinds) if k == VISUAL)
    assert max(i for i, k in enumerate(kinds) if k == ANOMALY) < last_visual  # before the second image


def test_without_expert_matches_transformers(tiny_model):
    """With the expert off, the built sequence gives the same logits as transformers' own path."""
    from transformers import AutoProcessor

    image = random_image(36, 78, 7)
    prompt = format_question("Are there any defects in the image? Answer Yes or No.")
    processor = AutoProcessor.from_pretrained(tiny_model.llava.name_or_path)
    native = processor(text=prompt, images=[image], return_tensors="pt")
    with torch.no_grad():
        ref = tiny_model.llava(**native).logits[0, -1]
        ours = tiny_model.forward(tiny_model.build_inputs([prompt], [[image]], use_expert=False)).logits[
            0, -1
        ]
    assert torch.allclose(ref, ours, atol=1e-4)


def test_sequence_layout_and_labels(tiny_model):
    image = random_image(80, 80, 3)
    prompt = format_question("Is it defective?")
    inputs = tiny_model.build_inputs([prompt], [[image]], answers=["Yes."])
    kinds = inputs.token_kinds[0].tolist()
    first_vis = kinds.index(VISUAL)
    n_vis = kinds.count(VISUAL)
    n_phr = kinds.count(PHRASE)
    n_ano = kinds.count(ANOMALY)
    # text, then the usual visual tokens, then the phrase, then the anomaly tokens, then text again
    assert kinds[first_vis : first_vis + n_vis] == [VISUAL] * n_vis
    assert kinds[first_vis + n_vis : first_vis + n_vis + n_phr] == [PHRASE] * n_phr
    start = first_vis + n_vis + n_phr
    assert kinds[start : start + n_ano] == [ANOMALY] * n_ano
    assert kinds[start + n_ano] == TEXT and all(k == TEXT for k in kinds[:first_vis])
    phrase_ids = inputs.input_ids[0][inputs.token_kinds[0] == PHRASE].tolist()
    score = tiny_model.encode_images([image])[0].score
    assert tiny_model.tokenizer.decode(phrase_ids) == suspicion_phrase(score)
    # anomaly tokens are the projected expert tokens, the usual ones are untouched
    enc = tiny_model.encode_images([image])[0]
    assert torch.equal(inputs.inputs_embeds[0][inputs.token_kinds[0] == ANOMALY], enc.anomaly_embeds)
    assert torch.equal(inputs.inputs_embeds[0][inputs.token_kinds[0] == VISUAL], enc.visual_embeds)
    # only the answer (and its end token) is supervised
    labels = inputs.labels[0]
    supervised = labels != IGNORE_INDEX
    answer_ids = tiny_model.tokenizer("Yes.<|im_end|>", add_special_tokens=False)["input_ids"]
    assert labels[supervised].tolist() == answer_ids
    assert supervised[-len(answer_ids) :].all()
    loss = tiny_model.forward(inputs).loss
    assert torch.isfinite(loss)


def test_suspicion_phrase_thresholds():
    assert suspicion_phrase(0.1) == "with slightly suspicious features: "
    assert suspicion_phrase(0.3) == "with moderately suspicious features: "
    assert suspicion_phrase(0.69) == "with moderately suspicious features: "
    assert suspicion_phrase(0.7) == "with highly suspicious features: "


def test_batch_of_two_prompts_matches_single_runs(tiny_model):
    a, b = random_image(40, 40, 11), random_image(80, 80, 12)
    prompts = [format_question("Any defect?"), format_question("Describe the defect and where it is.")]
    batch = tiny_model.build_inputs(prompts, [[a], [b]])
    assert batch.inputs_embeds.shape[0] == 2
    assert (batch.token_kinds == PAD).any()  # different lengths: left padding
    with torch.no_grad():
        both = tiny_model.forward(batch).logits[:, -1]
        one = tiny_model.forward(tiny_model.build_inputs(prompts[:1], [[a]])).logits[0, -1]
        two = tiny_model.forward(tiny_model.build_inputs(prompts[1:], [[b]])).logits[0, -1]
    assert torch.allclose(both[0], one, atol=1e-4) and torch.allclose(both[1], two, atol=1e-4)


def test_generate_runs_with_and_without_expert(tiny_model):
    images = [[random_image(40, 40, 21)], [random_image(36, 78, 22)]]
    prompts = [format_question("Any defect?")] * 2
    out = tiny_model.generate(prompts, images, max_new_tokens=4, do_sample=False)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    out = tiny_model.generate(prompts[:1], images[:1], use_expert=False, max_new_tokens=3, do_sample=False)
    assert len(out) == 1


def test_vision_cache_reused_across_turns(tiny_model):
    image = random_image(78, 36, 31)
    tiny_model.clear_cache()
    calls, handle = count_tower_calls(tiny_model)
    try:
        history: list[tuple[str, str]] = []
        tiny_model.chat(history, "Is there a defect?", images=[image], max_new_tokens=3, do_sample=False)
        tiny_model.chat(history, "Where is it?", images=[image], max_new_tokens=3, do_sample=False)
        assert len(history) == 2 and "<image>" in history[0][0]
        assert len(calls) == 1  # encoded once for both turns
        prompt = format_question("Where?")
        with torch.no_grad():
            cached = tiny_model.forward(tiny_model.build_inputs([prompt], [[image]])).logits[0, -1]
            tiny_model.clear_cache()
            fresh = tiny_model.forward(tiny_model.build_inputs([prompt], [[image]])).logits[0, -1]
        assert len(calls) == 2
        assert torch.allclose(cached, fresh, atol=1e-5)
        other = random_image(78, 36, 32)  # same size, other pixels: never served from the cache
        assert not torch.equal(
            tiny_model.encode_images([other])[0].visual_embeds,
            tiny_model.encode_images([image])[0].visual_embeds,
        )
    finally:
        handle.remove()


def test_yes_probability_and_strict_parsing(tiny_model):
    p = tiny_model.yes_probability([random_image(40, 40, 41), random_image(80, 80, 42)])
    assert len(p) == 2 and all(0.0 <= v <= 1.0 for v in p)
    yes, no = tiny_model.yes_no_token_ids()
    for i in yes:
        assert tiny_model.tokenizer.decode([i]).strip().lower() == "yes"
    for i in no:
        assert tiny_model.tokenizer.decode([i]).strip().lower() == "no"
    logits = torch.full((1, len(tiny_model.tokenizer)), -10.0)
    logits[0, yes[0]] = 5.0
    assert float(yes_probability_from_logits(logits, yes, no)[0]) > 0.99
    result = tiny_model.detect(random_image(40, 40, 43))
    assert 0 <= result.pred_score <= 1 and result.anomaly_map.shape == (40, 40)
    assert parse_yes_no("Yes, there is a scratch.") is True
    assert parse_yes_no("no.") is False
    assert parse_yes_no("The eyes look fine") is None
    assert parse_yes_no("Nothing wrong") is None


def test_stage2_gradients_reach_projector_and_llm_only(tiny_model):
    image = random_image(36, 78, 81)
    calls, handle = count_tower_calls(tiny_model)
    try:
        inputs = tiny_model.build_inputs(
            [format_question("Any defect?")], [[image]], answers=["Yes."], trainable=True
        )
    finally:
        handle.remove()
    assert len(calls) == 1  # trainable inputs bypass the cache
    tiny_model.llava.zero_grad(set_to_none=True)
    tiny_model.expert.zero_grad(set_to_none=True)
    tiny_model.forward(inputs).loss.backward()
    core = tiny_model.core
    assert core.multi_modal_projector.linear_1.weight.grad is not None
    assert core.image_newline.grad is not None
    assert core.language_model.layers[0].mlp.up_proj.weight.grad is not None
    assert all(p.grad is None for p in core.vision_tower.parameters())
    assert all(p.grad is None for p in tiny_model.expert.parameters())
    tiny_model.llava.zero_grad(set_to_none=True)


def test_vision_features_feed_the_expert(tiny_model):
    images = [random_image(36, 78, 91), random_image(40, 40, 92)]
    feats = tiny_model.vision.features(images)
    assert feats.split_sizes == [3, 2] and feats.grid_shapes == [(1, 2), (1, 1)]
    expert = tiny_model.expert
    out = expert(feats.final, feats.levels(expert.config.layer_indices), feats.split_sizes)
    encs = tiny_model.encode_images(images)
    assert out.image_scores.tolist() == pytest.approx([e.score for e in encs], abs=1e-5)


def test_input_errors_and_expert_checks(tiny_model):
    from tools.ltfm.expert import AnomalyExpert, ExpertConfig

    image = random_image(40, 40, 101)
    with pytest.raises(ValueError, match="markers"):
        tiny_model.build_inputs(["<image> <image> two markers"], [[image]])
    with pytest.raises(ValueError, match="prompts"):
        tiny_model.build_inputs(["a", "b"], [[]])
    wrong = AnomalyExpert(
        ExpertConfig(hidden_size=32, grid_size=5, layer_indices=(1, 2, 3, 4), embedding_dim=8)
    )
    with pytest.raises(ValueError, match="do not match the vision tower"):
        tiny_model.set_expert(wrong)
    deep = AnomalyExpert(
        ExpertConfig(hidden_size=64, grid_size=5, layer_indices=(7, 13, 19, 25), embedding_dim=8)
    )
    with pytest.raises(ValueError, match="exceed"):
        tiny_model.set_expert(deep)
    text_only = tiny_model.build_inputs([format_question("Hello?", num_images=0)], [[]])
    assert set(text_only.token_kinds[0].tolist()) == {TEXT}
