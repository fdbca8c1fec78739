"""`python -m vitlab.pretrain`: pretrain vit_tiny's base offline (`--help` lists the flags).

The command only; the job itself is `vitlab.training.pretrain`.
"""

from vitlab.training.pretrain import main

if __name__ == "__main__":
    raise SystemExit(main())
