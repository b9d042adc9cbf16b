"""Request texts to token ids: the input type's prefix, special tokens, and NIM's length rules.

The service tokenizes (not the backend) because it must count tokens before running anything: an input over the
limit with ``truncate='NONE'`` is the client's error (400, as NIM answers), and ``usage`` reports real counts.
``START``/``END`` drop tokens of the *text* from its start or end; the special tokens and the input type's prefix
are always kept, so a truncated query still carries ``query: ``. ``END`` gives exactly the ids of Hugging Face's
``truncation=True, max_length=limit``, i.e. what ``Encoder.encode`` embeds at that max length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from embed_pipeline.core.encoder import EncoderConfig

Kind = Literal["query", "passage"]
TruncateMode = Literal["NONE", "START", "END"]


class InputTooLong(ValueError):
    """Input ``index`` has ``tokens`` tokens, over ``limit`` (prefix and special tokens included)."""

    def __init__(self, index: int, tokens: int, limit: int, kind: str) -> None:
        self.index, self.tokens, self.limit, self.kind = index, tokens, limit, kind
        super().__init__(
            f"input[{index}] has {tokens} tokens (with the '{kind}' prefix and special tokens), more than the "
            f"{limit} this service accepts per input. Shorten it, or send truncate='END' (or 'START') to cut it."
        )


class InputTokenizer:
    """Tokenize texts of one kind with that kind's prefix and token limit."""

    def __init__(self, tokenizer, config: EncoderConfig, max_tokens: dict[str, int]) -> None:
        self.tokenizer = tokenizer
        self.prefixes = {"query": config.query_prefix, "passage": config.passage_prefix}
        self.max_tokens = dict(max_tokens)
        self._fast = bool(getattr(tokenizer, "is_fast", False))
        self._prefix_tokens = {
            kind: len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0
            for kind, prefix in self.prefixes.items()
        }
        for kind, limit in self.max_tokens.items():
            floor = self._prefix_tokens[kind] + self._special_count() + 1
            if limit < floor:
                raise ValueError(
                    f"max tokens per {kind} ({limit}) leaves no room for text after the prefix and special tokens "
                    f"({floor - 1}); raise max_tokens_per_input."
                )

    def _special_count(self) -> int:
        return len(self.tokenizer("", add_special_tokens=True)["input_ids"])

    def encode(self, texts: Sequence[str], kind: Kind, truncate: TruncateMode) -> list[list[int]]:
        """Ids per text, within the kind's limit; raises :class:`InputTooLong` for the first too-long text (NONE)."""
        prefix = self.prefixes[kind]
        limit = self.max_tokens[kind]
        enc = self.tokenizer(
            [prefix + t for t in texts],
            add_special_tokens=True,
            truncation=False,
            padding=False,
            return_special_tokens_mask=True,
            return_offsets_mapping=self._fast,
            verbose=False,  # long inputs are handled below, not warned about
        )
        out: list[list[int]] = []
        for i, ids in enumerate(enc["input_ids"]):
            if len(ids) <= limit:
                out.append(list(ids))
                continue
            if truncate == "NONE":
                raise InputTooLong(i, len(ids), limit, kind)
            offsets = enc["offset_mapping"][i] if self._fast else None
            out.append(self._cut(ids, enc["special_tokens_mask"][i], offsets, kind, limit, truncate))
        return out

    def _cut(
        self,
        ids: list[int],
        special: list[int],
        offsets: list[tuple[int, int]] | None,
        kind: Kind,
        limit: int,
        truncate: TruncateMode,
    ) -> list[int]:
        lead = 0
        while lead < len(ids) and special[lead]:
            lead += 1
        trail = 0
        while trail < len(ids) - lead and special[len(ids) - 1 - trail]:
            trail += 1
        body = ids[lead : len(ids) - trail]
        if offsets is not None:  # fast tokenizers: prefix tokens are those starting inside the prefix
            prefix_len = len(self.prefixes[kind])
            n_prefix = 0
            while n_prefix < len(body) and offsets[lead + n_prefix][0] < prefix_len:
                n_prefix += 1
        else:
            n_prefix = self._prefix_tokens[kind]
        keep = limit - lead - trail - n_prefix
        text = body[n_prefix:]
        text = text[:keep] if truncate == "END" else text[len(text) - keep :]
        return ids[:lead] + body[:n_prefix] + text + ids[len(ids) - trail :]
