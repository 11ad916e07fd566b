"""Tokenizers the web tier and the trainer share: no JAX, no downloads."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from app.contract import model_catalog


class TextTokenizer(Protocol):
    pad_id: int
    bos_id: int | None
    eos_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes shifted past three special ids; the presets use it so nothing is downloaded."""

    pad_id, bos_id, eos_id = 0, 1, 2
    offset = 3
    vocab_size = 264  # 3 specials + 256 bytes, rounded up to a multiple of 8

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        data = bytes(i - self.offset for i in ids if self.offset <= i < self.offset + 256)
        # An untrained model emits bytes that are not UTF-8: keep them readable as \xNN, not as boxes.
        return data.decode("utf-8", errors="backslashreplace")


class CheckpointTokenizer:
    """A checkpoint's tokenizer.json (Hugging Face `tokenizers`), or else its SentencePiece tokenizer.model,
    with special ids from config.json."""

    def __init__(self, checkpoint_dir: Path):
        if (checkpoint_dir / model_catalog.TOKENIZER_FILE).is_file():
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(checkpoint_dir / model_catalog.TOKENIZER_FILE))
            self._sentencepiece = None
        else:
            import sentencepiece

            self._sentencepiece = sentencepiece.SentencePieceProcessor(
                model_file=str(checkpoint_dir / model_catalog.SENTENCEPIECE_FILE))
        config = json.loads((checkpoint_dir / model_catalog.CHECKPOINT_CONFIG).read_text())
        # Instruction checkpoints list several end tokens (Llama 3.1: end of text, of a turn, of a message):
        # the first is the one a training example ends with.
        self.eos_id = int(_first(config["eos_token_id"]))
        bos = _first(config.get("bos_token_id"))
        self.bos_id = int(bos) if bos is not None else None
        pad = _first(config.get("pad_token_id"))
        self.pad_id = int(pad) if pad is not None else self.eos_id
        self.vocab_size = int(config["vocab_size"])

    def encode(self, text: str) -> list[int]:
        if self._sentencepiece is not None:
            return self._sentencepiece.encode(text)
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        if self._sentencepiece is not None:
            return self._sentencepiece.decode(ids)
        return self._tokenizer.decode(ids)


def _first(value):
    return value[0] if isinstance(value, list) and value else value


def load_tokenizer(model_id: str) -> TextTokenizer:
    """The tokenizer a run with this model id trains with."""
    if model_id in model_catalog.PRESETS:
        return ByteTokenizer()
    return CheckpointTokenizer(Path(model_id))


def _bytes_to_unicode() -> dict[int, str]:
    # The byte-to-character table of byte-level BPE (as in GPT-2), so every byte is one token.
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_byte_tokenizer_json(path: Path) -> None:
    """Save the presets' byte tokenizer as a `tokenizers` tokenizer.json with the same ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_tok = ByteTokenizer()
    vocab = {"<pad>": byte_tok.pad_id, "<bos>": byte_tok.bos_id, "<eos>": byte_tok.eos_id}
    vocab.update({char: b + byte_tok.offset for b, char in _bytes_to_unicode().items()})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<pad>", "<bos>", "<eos>"])
    tokenizer.save(str(path))
