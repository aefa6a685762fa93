"""Tiny randomly initialised models for tests, examples and benchmarks (no downloads).

`build_tiny_llava(folder)` writes a complete LLaVA-OneVision folder (weights, byte-level BPE tokenizer
trained in-process, image processor, processor, chat template) that `load_model(folder)` reads like a
real checkpoint; `build_tiny_qwen2_chat(folder)` writes a tiny Qwen2 text chat model that a vLLM
server can serve on CPU; `llava_ov_05b_config()` is the full-size llava-onevision-qwen2-0.5b-ov
architecture for speed and memory measurements with random weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.mllm.chat_format import CHATML_TEMPLATE

IMAGE_SIZE = 40  # tower input, 5x5 tokens of patch 8: an odd grid like SigLIP's 27x27
PATCH = 8
PINPOINTS = [[40, 40], [40, 80], [80, 40], [80, 80], [40, 120], [120, 40]]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
CHAT_TEMPLATE = CHATML_TEMPLATE
CORPUS = [
    "Are there any defects in the image? Answer Yes or No.",
    "Yes No yes no Yes. No. The part has a scratch on the upper left.",
    "with slightly suspicious features: with moderately suspicious features: with highly suspicious features:",
    "You are a helpful assistant. Describe the defect, its location, size and likely cause.",
    "The surface looks normal. There is a crack, a hole, a stain and a missing component.",
]


#: words that are single tokens in the Qwen2 vocabulary and must be here too: the suspicion phrase then
#: has one length for every level, as a server that reserves the expert's tokens needs
#: (`agent.mllm.expert_tokens.fixed_phrase_length`)
WHOLE_WORDS = (" slightly", " moderately", " highly")


def build_bpe_tokenizer(
    vocab_size: int = 384,
    extra_special: list[str] | None = None,
    chat_template: str = CHAT_TEMPLATE,
    whole_words: tuple[str, ...] = WHOLE_WORDS,
) -> Any:
    """A byte-level BPE tokenizer trained in-process, with Qwen's special tokens and a ChatML template
    (`extra_special`: more special tokens, e.g. Hermes' `<tool_call>`), and `whole_words` as single
    tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL + list(extra_special or []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        chat_template=chat_template,
    )
    tokenizer.padding_side = "left"
    if whole_words:
        tokenizer.add_tokens([AddedToken(word, normalized=False) for word in whole_words])
    return tokenizer


def silence_special_tokens(
    embeddings: Any, tokenizer: Any, extra: list[str] | None = None, fragments: bool = True
) -> None:
    """Zero the (tied) embedding rows of special, whitespace-only and byte-fragment tokens, so that a
    random model's greedy decoding writes visible words instead of stopping at once or answering blanks
    or broken bytes (what a brain would count as no answer)."""
    import torch

    special = set(tokenizer.convert_tokens_to_ids(SPECIAL + list(extra or [])))

    def mute(i: int) -> bool:  # special, blank, or a byte fragment that is no text on its own
        text = tokenizer.decode([i])
        return i in special or not text.strip() or (fragments and "\ufffd" in text)

    silent = [i for i in range(len(tokenizer)) if mute(i)]
    with torch.no_grad():
        embeddings.weight[silent] = 0.0


def build_tiny_llava(
    folder: Path,
    vocab_size: int = 384,
    patch_size: int = PATCH,
    vision_layers: int = 4,
    text_hidden_size: int = 64,
    seed: int = 0,
    speaks: bool = False,
) -> Path:
    """Write a tiny LLaVA-OneVision (weights, tokenizer, processor) into `folder`; returns it.

    `patch_size` 4 gives 10 x 10 tokens per crop instead of 5 x 5: small defects then fill more of a
    token, which the training smoke test uses. `speaks`: special and whitespace-only tokens silenced
    (`silence_special_tokens`), so that greedy decoding writes words where a brain must answer (the
    random model otherwise often says nothing, which counts as a failed answer); off for training,
    where the chat tokens must keep their own embeddings."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = build_bpe_tokenizer(vocab_size)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    video_token_id = tokenizer.convert_tokens_to_ids("<video>")

    vision = SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=patch_size,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden_size,
        intermediate_size=2 * text_hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=PINPOINTS,
        image_token_index=image_token_id,
        video_token_index=video_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    if speaks:
        silence_special_tokens(model.get_input_embeddings(), tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=PINPOINTS,
    )
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        num_image_tokens=(IMAGE_SIZE // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


#: ChatML with Hermes-style tools (what vLLM's `--tool-call-parser hermes` reads back): tool schemas in
#: a system turn, assistant tool calls as `<tool_call>{json}</tool_call>`, tool results as `tool` turns.
TOOLS_CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\n# Tools\\n' }}{% for tool in tools %}{{ tool | tojson }}"
    "{{ '\\n' }}{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% endif %}"
    "{% for call in message.get('tool_calls') or [] %}{{ '<tool_call>' }}"
    "{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}"
    "{{ '</tool_call>' }}{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_qwen2_chat(folder: Path, vocab_size: int = 384, seed: int = 0) -> Path:
    """Write a tiny random Qwen2ForCausalLM chat model (weights, tokenizer, chat template) into `folder`.

    Made for serving with vLLM on CPU: head_dim 64 (what its CPU attention supports), 4096 positions,
    Hermes tool-call tokens and a template that renders tools. Special and whitespace-only tokens are
    silenced (`silence_special_tokens`): every reply is `max_tokens` long.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    extra = ["<tool_call>", "</tool_call>"]
    # the tokenizer and the silenced rows the vLLM server tests were written against (no whole words)
    tokenizer = build_bpe_tokenizer(vocab_size, extra_special=extra, chat_template=TOOLS_CHAT_TEMPLATE, whole_words=())
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    silence_special_tokens(model.get_input_embeddings(), tokenizer, extra, fragments=False)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


#: AnyRes resolutions of llava-onevision-qwen2-*-ov (anyres_max_9): 1..6 x 1..6 crops of 384 px.
OV_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]


def llava_ov_05b_config() -> Any:
    """`LlavaOnevisionConfig` of llava-hf/llava-onevision-qwen2-0.5b-ov-hf (SigLIP-so400m truncated to
    26 layers, Qwen2-0.5B), for random-weight speed / memory runs."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=26,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
        layer_norm_eps=1e-6,
    )
    text = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=OV_PINPOINTS,
        image_token_index=151646,
        video_token_index=151647,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )


def ov_image_processor() -> Any:
    """The image processor settings of llava-onevision-qwen2-*-ov-hf (384 px crops, mean/std 0.5)."""
    from transformers import LlavaOnevisionImageProcessor

    return LlavaOnevisionImageProcessor(
        size={"height": 384, "width": 384},
        image_grid_pinpoints=OV_PINPOINTS,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
