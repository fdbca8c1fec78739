"""`python -m vitlab.finetune`: fine-tune a ViT and write a run folder (`--help` lists the flags).

The command only; the job itself is `vitlab.training.finetune` (setup, fit, finish).
"""

from vitlab.training.finetune import main

if __name__ == "__main__":
    raise SystemExit(main())
