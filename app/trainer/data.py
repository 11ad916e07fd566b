"""The run's dataset as batches of TrainingInput: tokenized, masked, split and shuffled by seed."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.contract import training_plan


@dataclass
class EncodedDataset:
    tokens: np.ndarray  # (examples, max_seq_length) int32
    mask: np.ndarray  # (examples, max_seq_length) int32, 1 on response tokens
    truncated: int


def read_examples(path: Path) -> list[tuple[str, str]]:
    examples = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                value = json.loads(line)
                examples.append((value["prompt"], value["response"]))
    return examples


def encode(examples: list[tuple[str, str]], tokenizer, max_seq_length: int, prompt_format=None) -> EncodedDataset:
    encoded = [training_plan.encode_example(tokenizer, p, r, max_seq_length, prompt_format=prompt_format)
               for p, r in examples]
    return EncodedDataset(np.asarray([e.tokens for e in encoded], dtype=np.int32),
                          np.asarray([e.mask for e in encoded], dtype=np.int32),
                          sum(e.truncated for e in encoded))


class TrainBatches:
    """Epochs of shuffled full batches; records the real (non-pad) tokens of each batch it yields.

    Setting `stop` ends the iteration early: Tunix then leaves its loop as at the end of
    the data and saves its final checkpoint.
    """

    def __init__(self, data: EncodedDataset, indices: list[int], batch_size: int, num_epochs: int, seed: int,
                 pad_id: int):
        self.data, self.indices, self.batch_size = data, np.asarray(indices), batch_size
        self.num_epochs, self.seed, self.pad_id = num_epochs, seed, pad_id
        self.tokens_per_batch: list[int] = []
        self.stop = threading.Event()

    def __iter__(self):
        from tunix.sft.peft_trainer import TrainingInput

        per_epoch = training_plan.steps_per_epoch(len(self.indices), self.batch_size)
        for epoch in range(self.num_epochs):
            order = np.random.default_rng(self.seed + epoch).permutation(self.indices)
            for b in range(per_epoch):
                if self.stop.is_set():
                    return
                rows = order[b * self.batch_size:(b + 1) * self.batch_size]
                tokens = self.data.tokens[rows]
                self.tokens_per_batch.append(int((tokens != self.pad_id).sum()))
                yield TrainingInput(input_tokens=tokens, input_mask=self.data.mask[rows])


class EvalBatches:
    """The eval split as fixed batches; re-iterable, since Tunix walks it at every eval."""

    def __init__(self, data: EncodedDataset, indices: list[int], batch_size: int, shards: int = 1):
        self.data, self.indices = data, np.asarray(indices)
        self.batch_size = training_plan.eval_batch_size(len(indices), batch_size, shards) if indices else 0

    def __len__(self):
        return len(self.indices) // self.batch_size if self.batch_size else 0

    def __iter__(self):
        from tunix.sft.peft_trainer import TrainingInput

        for b in range(len(self)):
            rows = self.indices[b * self.batch_size:(b + 1) * self.batch_size]
            yield TrainingInput(input_tokens=self.data.tokens[rows], input_mask=self.data.mask[rows])
