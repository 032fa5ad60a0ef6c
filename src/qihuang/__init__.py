"""qihuang (岐黄): turn a LLaMA-family model into a reader of the Chinese medical classics."""

__version__ = "0.1.0"
