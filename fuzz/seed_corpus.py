#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora from fixtures/ into fuzz/corpus/<target>/.

    python3 fuzz/seed_corpus.py        # from the repository root, or from fuzz/

decode_annotation: every flyte.secrets/* annotation value of the fixtures' pods (inputs and
                   expected outputs), and the protobuf text each decodes to.
mutate:            every fixture pod (input and expected output) as JSON, with the fixture's
                   config.yaml `webhook:` section in the `fuzz/settings` annotation; and the same
                   pods with their descriptors as plain text (`fuzz/plain-s<N>` annotations).
admission_review:  every fixture review.json, with `fuzz/settings` set in its object, and the
                   expected pods sent again as a review (the API server's reinvocation).

Files are named by the SHA-1 of their content, as libFuzzer names its own, so running this twice
adds nothing. Uses PyYAML for config.yaml when it is installed; without it the seeds carry no
settings and the fuzz targets pick settings by hash.
"""

import base64
import copy
import hashlib
import json
import pathlib
import sys

try:
    import yaml
except ImportError:  # the seeds are still useful without their settings
    yaml = None

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
FIXTURES = ROOT / "fixtures"
CORPUS = FUZZ / "corpus"
PREFIX = "flyte.secrets/s"


def b32decode(value):
    """Flyte's base32: alphabet a-z1-6, no padding, trailing bits ignored."""
    table = str.maketrans("abcdefghijklmnopqrstuvwxyz123456", "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    text = value.rstrip("=").translate(table)
    return base64.b32decode(text + "=" * (-len(text) % 8))


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / hashlib.sha1(data).hexdigest()
    if not path.exists():
        path.write_bytes(data)
        return 1
    return 0


def settings_of(fixture):
    config = fixture / "config.yaml"
    if yaml is None or not config.exists():
        return None
    webhook = (yaml.safe_load(config.read_text()) or {}).get("webhook") or {}
    return json.dumps(webhook, sort_keys=True)


def annotations(pod):
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    found = metadata.get("annotations") if isinstance(metadata, dict) else None
    return found if isinstance(found, dict) else None


def with_settings(pod, settings):
    pod = copy.deepcopy(pod)
    if settings is not None and annotations(pod) is not None:
        annotations(pod)["fuzz/settings"] = settings
    return pod


def plain(pod):
    """The pod with each decodable flyte.secrets/sN as fuzz/plain-sN protobuf text."""
    pod = copy.deepcopy(pod)
    found = annotations(pod)
    if found is None:
        return None
    changed = False
    for key in [k for k in found if k.startswith(PREFIX)]:
        try:
            text = b32decode(found[key]).decode()
        except Exception:  # malformed on purpose in some fixtures
            continue
        del found[key]
        found["fuzz/plain-s" + key[len(PREFIX):]] = text
        changed = True
    return pod if changed else None


def main():
    if not FIXTURES.is_dir():
        sys.exit(f"no fixtures at {FIXTURES}")
    counts = {"decode_annotation": 0, "mutate": 0, "admission_review": 0}
    for fixture in sorted(p for p in FIXTURES.iterdir() if (p / "review.json").exists()):
        raw = (fixture / "review.json").read_text()
        review = json.loads(raw)
        settings = settings_of(fixture)
        pods = [review.get("request", {}).get("object")]
        expected = fixture / "expected.json"
        if expected.exists():
            pods.append(json.loads(expected.read_text()).get("pod"))
        pods = [pod for pod in pods if pod is not None]

        counts["admission_review"] += write("admission_review", raw)
        for pod in pods:
            again = copy.deepcopy(review)
            again["request"]["object"] = with_settings(pod, settings)
            counts["admission_review"] += write("admission_review", json.dumps(again, indent=1))

            counts["mutate"] += write("mutate", json.dumps(with_settings(pod, settings)))
            text_pod = plain(pod)
            if text_pod is not None:
                counts["mutate"] += write("mutate", json.dumps(with_settings(text_pod, settings)))

            for key, value in (annotations(pod) or {}).items():
                if key.startswith(PREFIX) and isinstance(value, str):
                    counts["decode_annotation"] += write("decode_annotation", value)
                    try:
                        counts["decode_annotation"] += write("decode_annotation", b32decode(value))
                    except Exception:
                        pass
    for target, count in counts.items():
        print(f"{target}: {count} new seeds in {CORPUS / target}")


if __name__ == "__main__":
    main()
