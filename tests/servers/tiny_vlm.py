"""A tiny random-weight LLaVA model, built offline into a Hugging Face cache layout.

``build_tiny_llava(cache_dir)`` writes ``cache_dir/hub/models--imageworks-test--tiny-llava``
(``refs/main`` plus one ``snapshots/<rev>/`` folder) so that a process started with
``HF_HOME=cache_dir`` and ``HF_HUB_OFFLINE=1`` -- ``transformers serve`` in particular --
loads it by id, ``imageworks-test/tiny-llava``.  Nothing is downloaded: the tokenizer is a
byte-level BPE trained here on generated text, the weights come from a fixed seed.

The model is meant for protocol tests, not for answers: it reads a 32x32 image as 16 image
tokens and writes random but repeatable printable ASCII (greedy, whatever the temperature).  It stops only
when ``max_tokens`` runs out, unless the request biases the end-of-sequence token up
(``"logit_bias": {"1": 100.0}``: the value must be a JSON float; see ``TinyLlavaInfo``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MODEL_ID = "imageworks-test/tiny-llava"
# Bump whenever anything below changes what gets written: a cache built with another version is rebuilt.
RECIPE_VERSION = "tiny-llava-1"

IMAGE_SIZE = 32
PATCH_SIZE = 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # CLS dropped ("default" feature strategy)
VOCAB_SIZE = 640
SEED = 1234

BOS, EOS, PAD, IMAGE = "<s>", "</s>", "<pad>", "<image>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IMAGE]  # ids 0..3, in this order

# USER:/ASSISTANT: turns in the LLaVA-1.5 style.  A message's content is a string or a list of
# parts; an image part (any part whose type is "image", which is what transformers' processors
# and `transformers serve` hand over for OpenAI "image_url" parts) becomes one <image> marker,
# which the processor expands to IMAGE_TOKENS image tokens.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- 'SYSTEM: ' -}}"
    "{%- elif message['role'] == 'user' -%}{{- 'USER: ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' -}}"
    "{%- else -%}{{- message['role'] | upper + ': ' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- elif message['content'] -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{- '</s>' -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

_WORDS_TEXT = (
    "a an the this that image picture photo shows contains describe what is in of on with and or "
    "red green blue yellow black white gray orange purple pink brown dark light bright color colour "
    "square circle line stripe corner left right top bottom middle center background foreground "
    "cat dog car tree house sky sea road person face text label sign number one two three four "
    "small large big tiny simple plain empty full pattern gradient noise pixel pixels test sample "
    "caption answer question yes no please briefly detail details object objects scene view "
    "USER ASSISTANT SYSTEM tag tags keyword keywords json score rating quality"
)


@dataclass(frozen=True)
class TinyLlavaInfo:
    """What a test needs to know about the built model."""

    model_id: str
    snapshot: Path
    revision: str
    eos_token_id: int
    image_token_id: int
    image_size: int
    image_tokens: int


def _corpus(rng: random.Random) -> Iterator[str]:
    words_pool = _WORDS_TEXT.split()
    punct = [".", ",", "?", "!", ":", ";", "", "", ""]
    for _ in range(3000):
        n = rng.randint(3, 14)
        words = [rng.choice(words_pool) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(n), str(rng.randint(0, 999)))
        line = " ".join(words) + rng.choice(punct)
        yield line[0].upper() + line[1:] if rng.random() < 0.5 else line
    yield "".join(chr(c) for c in range(32, 127))


def _build_tokenizer(out_dir: Path) -> tuple[object, list[int]]:
    """Train the BPE; returns the transformers tokenizer and the token ids to never generate."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(random.Random(SEED)), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        model_max_length=4096,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out_dir)

    # Suppress every token that would decode to something other than printable ASCII or a
    # newline (the byte tokens for control and non-ASCII bytes), plus <s>, <pad> and <image>:
    # the random model then writes plain text that decodes cleanly token by token.
    byte_to_char = _bytes_to_unicode()
    allowed_bytes = set(range(32, 127)) | {10}
    vocab = tok.get_vocab()
    suppress = [vocab[byte_to_char[b]] for b in range(256) if b not in allowed_bytes]
    suppress += [vocab[BOS], vocab[PAD], vocab[IMAGE]]
    return fast, sorted(suppress)


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> printable character table that byte-level BPE uses."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _build_snapshot(out_dir: Path) -> None:
    import torch
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer, suppress = _build_tokenizer(out_dir)
    vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
    bos_id, eos_id, pad_id, image_id = (vocab[t] for t in SPECIAL_TOKENS)

    text_config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    vision_config = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_id,
        image_seq_length=IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    config.architectures = ["LlavaForConditionalGeneration"]

    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Random init is ~N(0, 0.02): too flat for greedy decoding to look like anything. Widen
        # the output head so argmax is decisive and temperature-0 runs are stable.
        model.lm_head.weight.mul_(25.0)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        do_sample=False,
        suppress_tokens=suppress,
    )
    model.save_pretrained(out_dir, safe_serialization=True)

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )
    processor.save_pretrained(out_dir)


def _repo_dir(cache_dir: Path, model_id: str = MODEL_ID) -> Path:
    return cache_dir / "hub" / ("models--" + model_id.replace("/", "--"))


def _read_built(repo: Path) -> TinyLlavaInfo | None:
    try:
        meta = json.loads((repo / "imageworks-recipe.json").read_text())
        revision = (repo / "refs" / "main").read_text().strip()
    except (OSError, ValueError):
        return None
    snapshot = repo / "snapshots" / revision
    if meta.get("recipe") != RECIPE_VERSION or not (snapshot / "model.safetensors").is_file():
        return None
    return TinyLlavaInfo(
        model_id=MODEL_ID,
        snapshot=snapshot,
        revision=revision,
        eos_token_id=int(meta["eos_token_id"]),
        image_token_id=int(meta["image_token_id"]),
        image_size=IMAGE_SIZE,
        image_tokens=IMAGE_TOKENS,
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tiny_llava_info(cache_dir: Path) -> TinyLlavaInfo:
    """Build if needed (see ``build_tiny_llava``) and describe the model."""
    cache_dir = Path(cache_dir)
    repo = _repo_dir(cache_dir)
    info = _read_built(repo)
    if info is not None:
        return info
    # hub/.locks is where huggingface_hub keeps its own locks, and what its cache scan skips.
    with _locked(cache_dir / "hub" / ".locks" / "imageworks-tiny-llava.lock"):
        info = _read_built(repo)  # another process may have built it while we waited
        if info is not None:
            return info
        staging = Path(tempfile.mkdtemp(prefix=".tiny-llava-build-", dir=cache_dir))
        try:
            files = staging / "files"
            files.mkdir()
            _build_snapshot(files)
            digest = hashlib.sha1(RECIPE_VERSION.encode())
            for f in sorted(files.iterdir()):
                f.chmod(0o644)
                digest.update(f.name.encode())
                digest.update(f.read_bytes())
            revision = digest.hexdigest()
            new_repo = staging / "repo"
            (new_repo / "refs").mkdir(parents=True)
            (new_repo / "blobs").mkdir()
            (new_repo / "snapshots").mkdir()
            files.rename(new_repo / "snapshots" / revision)
            (new_repo / "refs" / "main").write_text(revision)
            tok = json.loads((new_repo / "snapshots" / revision / "tokenizer.json").read_text())
            ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
            meta = {
                "recipe": RECIPE_VERSION,
                "model_id": MODEL_ID,
                "revision": revision,
                "eos_token_id": ids[EOS],
                "image_token_id": ids[IMAGE],
            }
            (new_repo / "imageworks-recipe.json").write_text(json.dumps(meta, indent=2) + "\n")
            if repo.exists():
                shutil.rmtree(repo)
            os.rename(new_repo, repo)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    info = _read_built(repo)
    if info is None:
        raise RuntimeError(f"built {MODEL_ID} under {repo} but cannot read it back")
    return info


def build_tiny_llava(cache_dir: Path) -> str:
    """Build the tiny LLaVA into ``cache_dir/hub`` (an HF_HOME) unless it is there already.

    Idempotent and safe across processes (a file lock, then an atomic rename); a cache built
    by another ``RECIPE_VERSION`` is replaced.  Returns the model id to request.
    """
    return tiny_llava_info(cache_dir).model_id
