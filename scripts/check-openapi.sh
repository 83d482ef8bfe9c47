#!/usr/bin/env bash
# Checks docs/openapi.json against the OpenAPI 3.1 schema, with openapi-spec-validator from PyPI
# in a virtualenv under target/. (The test it::api_spec checks the file against the running
# server: every operation called, every answer documented and valid against its schema.)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/openapi-venv
if [ ! -x "$venv/bin/openapi-spec-validator" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check openapi-spec-validator==0.9.0
fi
"$venv/bin/openapi-spec-validator" docs/openapi.json
