"""Fine-tuning: manifests, cached Mimi codes, training targets, LoRA, the training loop, export.

Layout (one concept a file):

* :mod:`dsm.train.loop`: the generic loop and the :class:`~dsm.train.loop.TrainTask` protocol
  that every task (STT here, TTS and voices beside it) implements;
* :mod:`dsm.train.manifest`: the jsonl manifests (dsm's and moshi-finetune's layouts);
* :mod:`dsm.train.codes_cache`: Mimi codes computed once and cached on disk;
* :mod:`dsm.train.stt_target`: the STT training target (delayed text, word markers, padding);
* :mod:`dsm.train.lora`: LoRA adapters on the LM's projections, saved and merged;
* :mod:`dsm.train.export`: a merged model written as a checkpoint directory in Kyutai's layout.

Nothing here is imported by inference code; ``dsm.commands.finetune`` drives it.
"""

from __future__ import annotations

from dsm.train.loop import LossSum, TrainConfig, TrainResult, TrainTask, train

__all__ = ["LossSum", "TrainConfig", "TrainResult", "TrainTask", "train"]
