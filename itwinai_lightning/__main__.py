"""``python -m itwinai_lightning`` entry point."""

from itwinai_lightning.cli.main import main

if __name__ == "__main__":
    main()
