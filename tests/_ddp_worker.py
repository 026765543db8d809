"""Worker for test_trainer_ddp.py: run under torchrun (2 CPU processes, gloo); trains stock trl and FastGRPOTrainer.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/_ddp_worker.py MODEL_DIR OUT_DIR
Each rank writes OUT_DIR/{stock,fast}-rank{R}.pt with the log history and the trained weights.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import torch
    import transformers
    from _parity import base_config
    from _tiny import id_reward, prompt_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from fastgrpo import FastGRPOTrainer

    transformers.logging.set_verbosity_error()
    model_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    for name, cls, extra in (("stock", GRPOTrainer, {}), ("fast", FastGRPOTrainer, {"fastgrpo_backend": "torch"})):
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        args = base_config(
            str(out_dir / f"run-{name}"),
            loss_type="dapo",
            beta=0.04,
            num_iterations=2,
            ddp_backend="gloo",
            per_device_train_batch_size=4,
            num_generations=4,
        )
        trainer = cls(
            model=model,
            reward_funcs=id_reward,
            args=args,
            train_dataset=prompt_dataset(8),
            processing_class=tok,
            **extra,
        )
        trainer.train()
        assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
        weights = {
            k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
        }
        torch.save({"logs": trainer.state.log_history, "weights": weights}, out_dir / f"{name}-rank{rank}.pt")


if __name__ == "__main__":
    main()
