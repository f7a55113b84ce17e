"""tokenmill: raw text to a trained, evaluated, exported language model.

Stages, in data-flow order: ingest → filters → dedup → tokenize → train → evaluation → export → report.
Run all of them with `tokenmill run CONFIG.yaml`, or one at a time (`tokenmill --help`).
"""

__version__ = "0.1.0"
