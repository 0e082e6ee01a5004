"""Each group's LoRA stored as soon as it is trained, so a redelivered job does not train it again.

Keys are deterministic (`jobs/<job id>/loras/<index>.safetensors`): a retry overwrites the same
object, and the next attempt of the job finds what the last one finished.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from app.storage import StorageError
from worker.erasure.fusion import LoraFactors
from worker.erasure.lora_files import load_lora_factors
from worker.erasure.lora_training import ConceptLora, save_concept_lora

logger = logging.getLogger(__name__)


def checkpoint_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/loras/{index:03d}.safetensors"


def store_checkpoint(store, job_id: str, lora: ConceptLora) -> None:
    """Upload one group's LoRA; a failure only costs retraining it on a redelivery, so it is
    logged, not raised."""
    with tempfile.TemporaryDirectory(prefix="mace-lora-") as scratch:
        path = save_concept_lora(lora, scratch)
        try:
            store.put_file(checkpoint_key(job_id, lora.group_index), path)
        except StorageError as exc:
            logger.warning(
                "job %s: LoRA of group %d not checkpointed: %s", job_id, lora.group_index, exc
            )
            return
    logger.info("job %s: stored the LoRA of group %d", job_id, lora.group_index)


def load_checkpoints(store, job_id: str, groups: int) -> dict[int, LoraFactors]:
    """The LoRAs an earlier attempt of the job stored, by group index (unreadable ones skipped)."""
    found: dict[int, LoraFactors] = {}
    with tempfile.TemporaryDirectory(prefix="mace-lora-") as scratch:
        for index in range(groups):
            key = checkpoint_key(job_id, index)
            try:
                if not store.exists(key):
                    continue
                path = store.get_file(key, Path(scratch) / f"{index:03d}.safetensors")
                found[index] = load_lora_factors(path)
            except Exception as exc:  # any failure here only means training the group again
                logger.warning("job %s: stored LoRA of group %d not used: %s", job_id, index, exc)
    if found:
        logger.info("job %s: resuming with stored LoRAs of groups %s", job_id, sorted(found))
    return found


def drop_checkpoints(store, job_id: str, groups: int) -> None:
    """Delete a succeeded job's checkpoints: its model's `lora-NNN` artifacts hold the same
    LoRAs. Best effort: a leftover only costs storage."""
    for index in range(groups):
        try:
            store.delete(checkpoint_key(job_id, index))
        except StorageError as exc:
            logger.warning("job %s: checkpoint %d not deleted: %s", job_id, index, exc)
            return
