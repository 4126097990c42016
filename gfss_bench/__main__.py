"""Allow `python -m gfss_bench ...` (also used by torchrun)."""

from gfss_bench.cli import main

if __name__ == "__main__":
    main()
