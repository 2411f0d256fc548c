"""The front door's pure core: validation, encoding, incremental detokenization, stop strings.

No gRPC here; the servicer converts protobuf to `GenerateParams` and a request's `Delivery`s
to responses through an `OutputStream` (text deltas, stop strings, usage) and back.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from services.common.errors import InvalidArgumentError
from services.common.types import Delivery, SamplingParams
from services.models.chat_template import render_chat

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_PROMPT_CHARS = 1_000_000  # the cap whatever the context; the model's own bound is lower
MAX_REQUEST_ID_CHARS = 128


@dataclass(slots=True)
class GenerateParams:
    """A front-door request as the core sees it (the proto's fields, unvalidated)."""

    prompt: str = ""
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    request_id: str = ""
    prompt_token_ids: list[int] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)  # a chat, not prompt


@dataclass(slots=True)
class PreparedRequest:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    ignore_eos: bool
    stop: list[str]


class TokenizerCore:
    """Owns the Hugging Face tokenizer, the model's chat template and the limits a request is
    checked against."""

    def __init__(
        self,
        tokenizer: Tokenizer | Path,
        max_context: int,
        vocab_size: int,
        chat_template: str | None = None,
    ) -> None:
        if isinstance(tokenizer, Path):
            tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.vocab_size = vocab_size
        self.chat_template = chat_template
        # No token spells more characters than the longest vocabulary entry, so a prompt longer
        # than this cannot fit the context: refused before the (costly) encoding.
        max_token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        self.max_prompt_chars = min(MAX_PROMPT_CHARS, max_context * max(1, max_token_chars))

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text of a chat: the model's template, rendered for every front door (gRPC
        `messages`, HTTP /v1/chat/completions) the one way."""
        if self.chat_template is None:
            raise InvalidArgumentError(
                "the model has no chat template: send a plain prompt (HTTP: /v1/completions)",
                "messages",
            )
        return render_chat(self.chat_template, messages, add_generation_prompt=True)

    def prepare(self, params: GenerateParams, request_id: str) -> PreparedRequest:
        """Validate every field, then encode; raises InvalidArgumentError naming the field."""
        if params.messages:
            if params.prompt or params.prompt_token_ids:
                raise InvalidArgumentError("send `messages` or a prompt, not both", "messages")
            params.prompt = self.chat_prompt(params.messages)
        _check_sampling(params)
        _check_stop(params.stop)
        if len(params.request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidArgumentError(
                f"request_id is longer than {MAX_REQUEST_ID_CHARS} chars", "request_id"
            )
        prompt_ids = self._prompt_ids(params)
        self._check_lengths(len(prompt_ids), params.max_tokens)
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        sampling = SamplingParams(
            temperature=float(params.temperature),
            top_p=float(params.top_p) if params.top_p > 0 else 1.0,
            top_k=int(params.top_k),
            seed=int(seed),
        )
        return PreparedRequest(
            request_id=request_id,
            prompt_token_ids=prompt_ids,
            max_tokens=params.max_tokens,
            sampling=sampling,
            ignore_eos=params.ignore_eos,
            stop=list(params.stop),
        )

    def _prompt_ids(self, params: GenerateParams) -> list[int]:
        if params.prompt_token_ids:
            ids = list(params.prompt_token_ids)
            if len(ids) >= self.max_context:
                raise InvalidArgumentError(
                    f"prompt_token_ids has {len(ids)} tokens but the model's context is "
                    f"{self.max_context}",
                    "prompt_token_ids",
                )
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidArgumentError(
                    f"prompt_token_ids contains {bad[0]}, outside the vocabulary "
                    f"[0, {self.vocab_size})",
                    "prompt_token_ids",
                )
            return ids
        if not params.prompt:
            raise InvalidArgumentError(
                "prompt is empty: send text in `prompt` or ids in `prompt_token_ids`", "prompt"
            )
        if len(params.prompt) > self.max_prompt_chars:
            raise InvalidArgumentError(
                f"prompt has {len(params.prompt)} characters; at most {self.max_prompt_chars} "
                f"can fit the model's context of {self.max_context} tokens",
                "prompt",
            )
        # encode_batch releases the GIL (encode does not): a long prompt tokenized on a worker
        # thread does not stall the event loop's other streams
        return self.tokenizer.encode_batch([params.prompt])[0].ids

    def _check_lengths(self, num_prompt_tokens: int, max_tokens: int) -> None:
        if max_tokens < 1:
            raise InvalidArgumentError(f"max_tokens must be >= 1, got {max_tokens}", "max_tokens")
        if num_prompt_tokens >= self.max_context:
            raise InvalidArgumentError(
                f"prompt has {num_prompt_tokens} tokens but the model's context is "
                f"{self.max_context}",
                "prompt",
            )
        if num_prompt_tokens + max_tokens > self.max_context:
            raise InvalidArgumentError(
                f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the "
                f"model's context of {self.max_context}; lower max_tokens to at most "
                f"{self.max_context - num_prompt_tokens}",
                "max_tokens",
            )

    def detokenizer(self) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer)

    def output_stream(self, req: PreparedRequest) -> OutputStream:
        return OutputStream(req, IncrementalDetokenizer(self.tokenizer))


@dataclass(slots=True)
class Chunk:
    """What one delivery becomes for the caller: a text delta and, at the end, how it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str = ""  # "" while running; "stop" also when a stop string matched
    is_stopped_by_string: bool = False  # the scheduler must be told to stop generating

    @property
    def is_final(self) -> bool:
        return self.finish_reason != ""

    def extend(self, later: Chunk) -> Chunk:
        """This chunk followed by `later`, as one (several deliveries in one message)."""
        self.text += later.text
        self.token_ids += later.token_ids
        self.finish_reason = later.finish_reason
        self.is_stopped_by_string = later.is_stopped_by_string
        return self


class OutputStream:
    """One request's output: incremental detokenization, stop strings, and usage."""

    def __init__(self, req: PreparedRequest, detokenizer: IncrementalDetokenizer) -> None:
        self.request = req
        self._detokenizer = detokenizer
        self._stop = StopMatcher(req.stop)
        self.num_output_tokens = 0
        self.detokenize_s = 0.0
        self.is_finished = False

    def push(self, delivery: Delivery) -> Chunk:
        """The chunk for one (error-free) delivery; the one with a finish_reason is the last."""
        started = time.perf_counter()
        self.num_output_tokens += len(delivery.token_ids)
        stop = self._stop
        text = stop.push(self._detokenizer.push(delivery.token_ids))
        if delivery.is_finished and not stop.is_stopped:
            text += stop.push(self._detokenizer.flush())
            text += "" if stop.is_stopped else stop.flush()
        self.detokenize_s += time.perf_counter() - started
        chunk = Chunk(text, list(delivery.token_ids))
        if stop.is_stopped:
            chunk.finish_reason, chunk.is_stopped_by_string = "stop", True
        elif delivery.is_finished:
            chunk.finish_reason = delivery.finish_reason
        self.is_finished = chunk.is_final
        return chunk

    @property
    def usage(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens)."""
        return len(self.request.prompt_token_ids), self.num_output_tokens


def _check_sampling(params: GenerateParams) -> None:
    if math.isnan(params.temperature) or params.temperature < 0:
        raise InvalidArgumentError(
            f"temperature must be >= 0 (0 = greedy), got {params.temperature}", "temperature"
        )
    if math.isinf(params.temperature):
        raise InvalidArgumentError("temperature must be finite", "temperature")
    if math.isnan(params.top_p) or not 0 <= params.top_p <= 1:
        raise InvalidArgumentError(
            f"top_p must be in (0, 1] (0 means 1), got {params.top_p}", "top_p"
        )
    if params.top_k < 0:
        raise InvalidArgumentError(f"top_k must be >= 0 (0 = off), got {params.top_k}", "top_k")


def _check_stop(stop: list[str]) -> None:
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidArgumentError(
            f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}", "stop"
        )
    for s in stop:
        if not s:
            raise InvalidArgumentError("stop strings must not be empty", "stop")
        if len(s) > MAX_STOP_CHARS:
            raise InvalidArgumentError(
                f"stop strings must be at most {MAX_STOP_CHARS} characters", "stop"
            )


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without splitting a UTF-8 character.

    Decoding a window (prefix_offset..) and holding back text that ends in U+FFFD keeps bytes of a
    multi-byte character together until the token that completes it arrives.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_ids: list[int]) -> str:
        self._ids.extend(token_ids)
        return self._delta(is_final=False)

    def flush(self) -> str:
        """Whatever is still held back, at the end of the stream."""
        return self._delta(is_final=True)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def _delta(self, is_final: bool) -> str:
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text):
            return ""
        if new_text.endswith("\ufffd") and not is_final:
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]


class StopMatcher:
    """Finds stop strings in streamed text; holds back a tail that may be the start of one."""

    def __init__(self, stop: list[str]) -> None:
        self._stop = stop
        self._max_len = max((len(s) for s in stop), default=0)
        self._held = ""
        self.is_stopped = False

    def push(self, text: str) -> str:
        """Text that is safe to emit now; sets `is_stopped` when a stop string appeared."""
        if not self._stop:
            return text
        window = self._held + text
        hits = [i for i in (window.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.is_stopped = True
            self._held = ""
            return window[: min(hits)]
        keep = self._partial_tail(window)
        self._held = window[len(window) - keep :] if keep else ""
        return window[: len(window) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _partial_tail(self, window: str) -> int:
        """Length of the longest suffix of `window` that is a proper prefix of a stop string."""
        for n in range(min(self._max_len - 1, len(window)), 0, -1):
            suffix = window[-n:]
            if any(s.startswith(suffix) for s in self._stop):
                return n
        return 0
