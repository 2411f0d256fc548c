"""Chat templates rendered as Hugging Face renders them: jinja2 in a sandbox, `trim_blocks` and
`lstrip_blocks`, `raise_exception`, and the tokenizer's special tokens as variables."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.common.errors import InvalidArgumentError


class ChatTemplateError(InvalidArgumentError):
    """The messages cannot be rendered by the model's template (the template said why)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "messages")


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(template)


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: dict[str, str] | None = None,
) -> str:
    """The prompt text for `messages` ([{"role", "content"}, ...])."""
    try:
        return str(
            _compile(template).render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **(special_tokens or {}),
            )
        )
    except ChatTemplateError:
        raise
    except TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template failed on these messages: {exc}")
