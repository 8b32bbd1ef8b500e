"""Workload: import a slice of the standard library, then read every file of a directory.

    python3 py_files.py DIR        # DIR holds the files made by bench/run_bench.py (2,000)
"""
import importlib
import os
import sys

MODULES = ("argparse", "asyncio", "base64", "calendar", "csv", "dataclasses", "datetime", "decimal",
           "difflib", "email.message", "email.parser", "fractions", "ftplib", "gzip", "hashlib",
           "html.parser", "http.client", "http.cookies", "imaplib", "inspect", "ipaddress", "json",
           "logging.handlers", "mailbox", "multiprocessing", "pathlib", "pickle", "plistlib",
           "pprint", "queue", "shlex", "shutil", "smtplib", "sqlite3", "statistics", "string",
           "subprocess", "tarfile", "tempfile", "textwrap", "tomllib", "typing", "unittest",
           "urllib.request", "uuid", "wave", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile")

for name in MODULES:
    importlib.import_module(name)
directory = sys.argv[1]
total = 0
for entry in sorted(os.listdir(directory)):
    with open(os.path.join(directory, entry), "rb") as handle:
        total += len(handle.read())
print(total)
