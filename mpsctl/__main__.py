"""``python -m mpsctl``: the same commands as the ``mpsctl`` script."""

from mpsctl.cli import main

if __name__ == "__main__":
    main(prog_name="mpsctl")
