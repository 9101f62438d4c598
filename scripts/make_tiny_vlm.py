"""Make a tiny Qwen2-VL model on local disk: random weights, a locally trained tokenizer.

    python scripts/make_tiny_vlm.py OUTDIR [--seed N]

Runs with the CPU vLLM venv's python (it needs torch, transformers and tokenizers). The model is
for exercising a real vLLM server offline: its captions are noise, but it streams, reports usage,
expands image placeholders exactly as Qwen2-VL does, and caches prefixes and images. The same seed
gives byte-identical files, so test figures that depend on the model are repeatable.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# Nothing here may reach a hub: the model is made, never fetched.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Training threads split merges differently run to run only when ties are broken by timing;
# one thread removes the question.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
VOCAB_SIZE = 1536  # trained size, special tokens included; vLLM pads nothing, so keep it exact
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
# Small images keep prefill cheap on a CPU: between 4 and 64 merged image tokens per image.
MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 64

# Qwen2-VL's chat template: one <|vision_start|><|image_pad|><|vision_end|> per image part, which
# the server expands to the image's token count.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (  # a small English-like vocabulary for the tokenizer's training text
    "a an the this that image photo picture shows of with in on at near under over and or "
    "small large red green blue yellow black white bright dark old new two three many one "
    "cat dog bird person man woman child car bus train boat plane tree flower house street "
    "sky cloud sun moon star water river sea beach mountain field road table cup coffee "
    "book phone screen window door wall floor room city night day morning evening light "
    "sitting standing walking running flying looking holding near behind beside across "
    "describe caption scene background foreground left right center top bottom corner "
    "galaxy rocket astronaut space suit helmet planet orbit launch smoke fire steam mug"
)


def _corpus(rng: random.Random, lines: int = 4000) -> list[str]:
    """Generated English-like text plus digits and punctuation, so every byte pattern a prompt
    is likely to contain has merges."""
    words_pool = _WORDS.split()
    out: list[str] = []
    for _ in range(lines):
        n = rng.randint(4, 16)
        words = [rng.choice(words_pool) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(n), str(rng.randint(0, 9999)))
        sentence = " ".join(words)
        out.append(sentence[0].upper() + sentence[1:] + rng.choice([".", "!", "?", ","]))
    return out


def build_tokenizer(seed: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(random.Random(seed)), trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def build_config(tokenizer: PreTrainedTokenizerFast) -> Qwen2VLConfig:
    def tid(token: str) -> int:
        value = tokenizer.convert_tokens_to_ids(token)
        assert isinstance(value, int)
        return value

    text: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,  # head_dim 32: vLLM's CPU attention needs >= 32
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [4, 6, 6],  # sums to head_dim / 2
        },
        "bos_token_id": tid("<|endoftext|>"),
        "eos_token_id": tid("<|im_end|>"),
        "pad_token_id": tid("<|endoftext|>"),
        "dtype": "float32",
    }
    vision: dict[str, Any] = {
        "depth": 1,
        "embed_dim": 64,
        "hidden_size": 128,  # the merger's output feeds the text model
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    }
    return Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tid("<|image_pad|>"),
        video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"),
        vision_end_token_id=tid("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def build(outdir: Path, seed: int) -> int:
    """Write the model to outdir (replacing it); returns the parameter count."""
    random.seed(seed)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(seed)
    config = build_config(tokenizer)
    # Float32 by torch's default dtype, which the config names too.
    model = Qwen2VLForConditionalGeneration(config)  # type: ignore[no-untyped-call]
    text_config = config.get_text_config()

    # Built beside the target and renamed into place, so a half-written model is never reused.
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        Qwen2VLImageProcessorPil(
            min_pixels=MIN_PIXELS,
            max_pixels=MAX_PIXELS,
            patch_size=PATCH_SIZE,
            merge_size=MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE,
        ).save_pretrained(tmp)
        _finish_preprocessor_config(tmp / "preprocessor_config.json")
        (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE)
        GenerationConfig(  # type: ignore[no-untyped-call]
            bos_token_id=text_config.bos_token_id,
            eos_token_id=text_config.eos_token_id,
            pad_token_id=text_config.pad_token_id,
        ).save_pretrained(tmp)
        for path in [tmp, *tmp.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # mkdtemp's 0700 is not wanted here
        if outdir.exists():
            shutil.rmtree(outdir)
        tmp.rename(outdir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return sum(p.numel() for p in model.parameters())


def _finish_preprocessor_config(path: Path) -> None:
    """vLLM builds the multimodal processor from `processor_class`; the min/max pixel keys are
    the names older readers look for."""
    data = json.loads(path.read_text())
    data["processor_class"] = "Qwen2VLProcessor"
    data["min_pixels"] = MIN_PIXELS
    data["max_pixels"] = MAX_PIXELS
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    params = build(args.outdir, args.seed)
    print(f"tiny-vlm: {params} parameters written to {args.outdir} (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
