"""Row shapes of SFT data: recognise a table's shape, check each row, render it as text.

The shapes are those TRL's ``SFTTrainer`` accepts, recognised by column name:

- ``messages`` — a conversation, a list of ``{"role", "content"}``, rendered by the
  tokenizer's chat template; loss on the assistant turns only (each turn's text and the
  template's end-of-turn marker, not the ``assistant`` header before it);
- ``prompt`` + ``completion`` strings — loss on the completion only;
- ``prompt`` + ``completion`` conversations — the prompt messages rendered with the
  template's generation prompt; loss on the completion messages;
- ``text`` — plain language modelling, loss on every token.

Other columns are ignored. A row is rendered as one string plus the character ranges that
carry loss (:class:`Rendered`); turning that into tokens and labels is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deadzone.data.sources import Table
from deadzone.errors import DeadzoneError

TEXT = "text"
PROMPT_COMPLETION = "prompt_completion"
MESSAGES = "messages"
CHAT_PROMPT_COMPLETION = "chat_prompt_completion"


@dataclass(frozen=True)
class Rendered:
    """One row as a single string and the ``[start, end)`` character ranges that carry loss."""

    text: str
    spans: tuple[tuple[int, int], ...]
    # Rendered by a chat template: its special tokens are already in ``text``, so none are
    # added by the tokenizer, and no EOS is appended (the template ends each turn itself).
    chat: bool


def table_format(table: Table) -> str:
    """The shape of ``table``'s rows, from its column names (and the first row's types)."""
    columns = set(table.columns)
    if MESSAGES in columns:
        return MESSAGES
    if "prompt" in columns or "completion" in columns:
        if "completion" not in columns:
            raise DeadzoneError(f"{table.source}: a 'prompt' column needs a 'completion' column")
        if "prompt" not in columns:
            raise DeadzoneError(f"{table.source}: a 'completion' column needs a 'prompt' column")
        first = table.rows[0].get("prompt") if table.rows else None
        return CHAT_PROMPT_COMPLETION if isinstance(first, list) else PROMPT_COMPLETION
    if TEXT in columns:
        return TEXT
    found = ", ".join(table.columns) or "none"
    raise DeadzoneError(
        f"{table.source}: no 'text', 'prompt' + 'completion' or 'messages' column (found: {found})"
    )


def render_table(table: Table, tokenizer: Any) -> tuple[str, list[Rendered]]:
    """``(shape, rendered rows)``; a malformed row is an error naming its file and line/row."""
    fmt = table_format(table)
    rendered = [render_row(row, fmt, tokenizer, table.where(i)) for i, row in enumerate(table.rows)]
    has_completions = fmt in (PROMPT_COMPLETION, CHAT_PROMPT_COMPLETION) and table.rows
    if has_completions and all(not _completion_text(r, fmt).strip() for r in table.rows):
        raise DeadzoneError(f"{table.source}: every completion is empty")
    return fmt, rendered


def render_row(row: dict, fmt: str, tokenizer: Any, where: str) -> Rendered:
    if fmt == TEXT:
        text = _string(row, "text", where)
        return Rendered(text, ((0, len(text)),), chat=False)
    if fmt == PROMPT_COMPLETION:
        prompt, completion = _string(row, "prompt", where), _string(row, "completion", where)
        return Rendered(prompt + completion, ((len(prompt), len(prompt) + len(completion)),), False)
    if fmt == CHAT_PROMPT_COMPLETION:
        prompt = _conversation(row, "prompt", where)
        completion = _conversation(row, "completion", where)
        head = _chat(tokenizer, prompt, True, where)
        text = _chat(tokenizer, prompt + completion, False, where)
        _check_prefix(head, text, where)
        return Rendered(text, ((len(head), len(text)),), chat=True)
    return _render_messages(_conversation(row, MESSAGES, where), tokenizer, where)


def _render_messages(messages: list[dict], tokenizer: Any, where: str) -> Rendered:
    """The conversation, with a span for each assistant turn.

    Turn ``i`` spans from the end of ``messages[:i]`` rendered with the generation prompt to
    the end of ``messages[:i + 1]``; this needs a template that renders a conversation's
    prefixes as prefixes of its text, as ordinary chat templates do. An opening assistant turn
    has no prefix to render (templates refuse an empty conversation): it spans from where its
    content first appears in its rendering, and carries no loss if the content is not there.
    """
    text = _chat(tokenizer, messages, False, where)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        upto = _chat(tokenizer, messages[: i + 1], False, where)
        if i == 0:  # no prefix to render: the turn starts where its content does
            start = upto.find(message["content"]) if message["content"] else -1
            if start >= 0:
                spans.append((start, len(upto)))
            continue
        head = _chat(tokenizer, messages[:i], True, where)
        _check_prefix(head, upto, where)
        _check_prefix(upto, text, where)
        spans.append((len(head), len(upto)))
    return Rendered(text, tuple(spans), chat=True)


def _completion_text(row: dict, fmt: str) -> str:
    if fmt == PROMPT_COMPLETION:
        return row["completion"]
    return "".join(m["content"] for m in row["completion"])


def _string(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    if value is None:
        raise DeadzoneError(f"{where}: '{key}' is missing")
    if not isinstance(value, str):
        raise DeadzoneError(f"{where}: '{key}' must be a string, not {type(value).__name__}")
    return value


def _conversation(row: dict, key: str, where: str) -> list[dict]:
    """``row[key]`` checked as a non-empty list of messages, without keys whose value is null
    (Arrow gives every message the union of all messages' keys)."""
    value = row.get(key)
    if not isinstance(value, list) or not value:
        raise DeadzoneError(f"{where}: '{key}' must be a non-empty list of {{role, content}}")
    messages = []
    for j, message in enumerate(value, 1):
        if not isinstance(message, dict):
            raise DeadzoneError(f"{where}: message {j} of '{key}' is not an object")
        message = {k: v for k, v in message.items() if v is not None}
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise DeadzoneError(
                f"{where}: message {j} of '{key}' needs 'role' and 'content' strings"
            )
        messages.append(message)
    return messages


def _chat(tokenizer: Any, messages: list[dict], generation_prompt: bool, where: str) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise DeadzoneError(f"{where}: conversations need a tokenizer with a chat template")
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as e:  # a template can raise anything (jinja errors, raise_exception)
        message = " ".join(str(e).split())
        raise DeadzoneError(f"{where}: the chat template failed: {message}") from None


def _check_prefix(head: str, text: str, where: str) -> None:
    if not text.startswith(head):
        raise DeadzoneError(
            f"{where}: the chat template does not render a conversation's start as the start of "
            "its text, so the turns that carry loss cannot be located"
        )
