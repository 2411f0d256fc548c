"""Build the presets' byte-level BPE `tokenizer.json` from the text in `corpus/`.

    python -m services.models.assets.build_tokenizer [--check]

Deterministic: the same corpus files give a byte-identical tokenizer.json (files are read in
sorted order, training runs single-threaded). `--check` fails if the shipped file is stale.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
CORPUS_DIR = ASSETS_DIR / "corpus"
TOKENIZER_PATH = ASSETS_DIR / "tokenizer.json"
VOCAB_SIZE = 4096
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN]


def corpus_lines() -> list[str]:
    lines: list[str] = []
    for path in sorted(CORPUS_DIR.glob("*.txt")):
        lines.extend(path.read_text(encoding="utf-8").splitlines(keepends=True))
    return lines


def build_tokenizer_json() -> str:
    # Parallel training can order ties differently; one thread keeps the output reproducible.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    return tokenizer.to_str(pretty=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if tokenizer.json is stale")
    args = parser.parse_args(argv)
    text = build_tokenizer_json()
    if args.check:
        is_fresh = TOKENIZER_PATH.exists() and TOKENIZER_PATH.read_text(encoding="utf-8") == text
        print("tokenizer.json is up to date" if is_fresh else "tokenizer.json is stale: rebuild it")
        return 0 if is_fresh else 1
    TOKENIZER_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {TOKENIZER_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
