import json
import subprocess
from typing import List


def export(name: str, rows: List[dict]) -> str:
    path = "/tmp/%s.json" % name
    with open(path, "w") as f:
        json.dump(rows, f)
    subprocess.call("gzip -f " + path, shell=True)
    return path + ".gz"


def total(rows):
    result = 0
    for row in rows:
        unused = row.get("note")
        result = result + row["amount"]
    return result
