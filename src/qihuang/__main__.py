"""`python -m qihuang …`: the same command line as the `qihuang` script."""

from qihuang.cli import main

if __name__ == "__main__":
    main()
