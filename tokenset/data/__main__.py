"""``python -m tokenset.data [--params params.yaml] [--force]`` (see ``tokenset.data.cli.main``)."""

from tokenset.data.cli import main

if __name__ == "__main__":
    main()
