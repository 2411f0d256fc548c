"""`hopscope generate` on the embedded pipeline: transformers' greedy tokens from `--model DIR`,
and `--chat` through the model's chat template."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from services.models import ModelNotFoundError, resolve_model
from tests.checkpoints import CHECKPOINT_KINDS, write_tiny_checkpoint

transformers = pytest.importorskip("transformers")
NEW_TOKENS = 16
SMOL = "smollm2-135m"


def _cli(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "deploy.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture(scope="module")
def smollm2() -> str:
    try:
        resolve_model(SMOL)
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    return SMOL


def test_generate_chat_answers_through_the_models_template(smollm2: str) -> None:
    question = "What is the capital of France?"
    result = _cli("generate", "--chat", "--model", smollm2, question, "--json", timeout_s=600)
    assert result.returncode == 0, result.stderr
    assert "Paris" in json.loads(result.stdout)["text"]
    assert "--chat" not in result.stderr  # no note: the template was used


def test_generate_without_chat_says_the_template_went_unused(smollm2: str) -> None:
    result = _cli("generate", "--model", smollm2, "Hi", "--max-tokens", "1", timeout_s=600)
    assert result.returncode == 0, result.stderr
    assert "not through its chat template; --chat sends it" in result.stderr


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_generate_json_matches_transformers_greedy(kind: str, tmp_path: Path) -> None:
    checkpoint = write_tiny_checkpoint(tmp_path / kind, kind)
    result = _cli(
        "generate",
        "The capital of France is",
        "--model",
        str(checkpoint),
        "--temperature",
        "0",
        "--ignore-eos",
        "--max-tokens",
        str(NEW_TOKENS),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) >= {"text", "token_ids", "prompt_token_ids", "finish_reason", "usage"}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32
    ).eval()
    ids = torch.tensor([out["prompt_token_ids"]])
    expected = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        pad_token_id=0,
    )
    assert out["token_ids"] == expected[0, ids.shape[1] :].tolist()
    assert out["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": ids.shape[1], "completion_tokens": NEW_TOKENS}


def test_generate_reports_a_missing_model_clearly() -> None:
    result = _cli("generate", "hi", "--model", "/nonexistent/model-dir")
    assert result.returncode != 0
    assert "/nonexistent/model-dir" in result.stderr


def test_generate_rejects_bad_input_with_the_status() -> None:
    result = _cli("generate", "", "--max-tokens", "4")
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "prompt is empty" in result.stderr


def test_generate_cuda_unavailable_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = _cli("generate", "hi", "--device", "cuda")
    assert result.returncode != 0 and "CUDA is not available" in result.stderr
