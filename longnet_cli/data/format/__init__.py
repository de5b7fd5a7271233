"""The tokenized corpus on disk: token shards, a documents table and a manifest, one module each.

One version of a corpus is one directory (DESIGN.md, "Data on disk"):

    manifest.json       written last and atomically; FORMAT_VERSION, tokenizer hash, totals, shards,
                        documents.parquet's sha256 and the manifest's own (``manifest_sha256``)
    tokenizer.model     the SentencePiece model that produced the ids
    shard-NNNNN.bin     raw little-endian token ids (uint16 or uint32), documents concatenated,
                        each followed by EOS; every shard holds exactly ``shard_tokens`` tokens
                        except the last, so a document may continue in the next shard
    documents.parquet   one row per document: where it starts, its length, its source, its split

``longnet tokenize`` writes each build as ``OUT/versions/N/`` and points ``OUT/manifest.json``
at the current one (``data/versions.py``); a flat directory (the files directly in it) is read
as it is. ``TokenizedCorpus.open`` resolves the pointer once and reads only that version, under
a shared lock that keeps a rebuild from removing it.

The modules, each with one job (none imports anything above ``data/`` and ``core/``):

    layout      the file names (stdlib only: ``versions`` uses them too)
    schema      the token dtypes and the documents table's columns
    errors      CorpusError (exit 2), CorruptCorpusError (exit 1), the rebuild hint
    manifest    its keys, construction, canonical text and digest, parsing and validation
    writer      ShardWriter, the one documents.parquet writer, write_manifest
    reader      TokenizedCorpus: token windows, documents, splits, the tokenizer
    verify      every check of a corpus against its manifest (``longnet inspect``'s included)

Every file's content is recorded: each shard's and tokenizer.model's sha256, documents.parquet's
(``documents_sha256``), and the manifest's own (``manifest_sha256``: the sha256 of the manifest's
text as ``write_manifest`` writes it, sorted keys and indent 2, without that key; a change of any
key, value or type changes it, whitespace does not). ``verify.problems(corpus, full=True)``
(``longnet inspect``) checks them all; a corpus written before these two were recorded still
reads, and ``verify.unverified`` says which files cannot be checked.

Errors, the same for every command that reads a corpus (train, eval, generate, inspect): a path
that is no corpus at all (no directory, no manifest.json, a pointer to no version) raises
``CorpusError``, exit 2: the user named the wrong directory. A corpus whose own files are
damaged (a manifest.json that does not parse or has a key of the wrong type or value, a shard,
documents.parquet or tokenizer.model that is missing, of the wrong size or unreadable) raises
``CorruptCorpusError``, exit 1: the data failed, and ``longnet tokenize --force`` rebuilds it.
Both are one line naming the file (and the key); ``inspect`` lists what verification finds
instead of raising, and exits 1 when anything is found.
"""
