"""SentencePiece training in a process of its own: `python spm_training.py REQUEST` (run by file path).

The trainer holds every sentence of its sample and the statistics of its merges: hundreds of MB for a
sample of 2M sentences. Trained inside a trial, that memory would sit on top of what the trial holds
next (the model, the memory-mapped shard, the batches), and freed memory is not always returned to
the system; in a child process it is all returned when the child ends, so a cold trial peaks no
higher than a warm one. The child imports only `json` and `sentencepiece` (no torch, not even this
package), so it starts in about 0.1 s.

REQUEST is JSON: {"sample": a file of JSON strings one per line, "model": where to write the model,
"trainer": SentencePiece trainer options}. Exit status 0: the model is written; `REFUSED`: the trainer
refused the options for this text (the reason alone on stderr); anything else: a crash.
"""

import json
import sys

import sentencepiece as spm

REFUSED = 3


def sentences(sample_file: str):
    """The sample's sentences, one JSON string a line (any character, newlines included, survives)."""
    with open(sample_file, encoding="utf-8") as file:
        for line in file:
            yield json.loads(line)


def main(request_text: str) -> int:
    request = json.loads(request_text)
    with open(request["model"], "wb") as model:
        try:
            # An iterator, not a file name: the trainer would store a file's path in the model.
            spm.SentencePieceTrainer.train(sentence_iterator=sentences(request["sample"]), model_writer=model,
                                           **request["trainer"])
        except RuntimeError as error:
            print(str(error).rsplit("] ", 1)[-1], file=sys.stderr)  # the reason, without the C++ location
            return REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
