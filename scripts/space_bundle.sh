#!/usr/bin/env bash
# What a Hugging Face Space receives: HEAD's tree without its history, as a new one-commit git
# repository in which every binary file and every file over 10 MB is stored through git LFS.
# A Space refuses binary files and files over 10 MB stored as plain blobs, and this repository's
# history holds ~300 MB of earlier checkpoints, so the repository itself cannot be pushed as is.
#
#   bash scripts/space_bundle.sh [DIR]          # default /tmp/shotstream-space; rebuilt each time
#   cd DIR && git push --force <your Space's git URL> main
#
# `make space-check` builds it, checks its blobs and runs the app from a clone of it.
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${1:-/tmp/shotstream-space}"
LIMIT=10000000  # bytes: the Space's 10 MB, counted in the smaller unit to stay on the safe side
MARK=".git/shotstream-space-bundle"  # only a folder this script made is ever deleted

command -v git-lfs >/dev/null || bash "$SRC/scripts/install_system_deps.sh" git-lfs
if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR")" ]; then
  [ -e "$DIR/$MARK" ] || { echo "error: $DIR exists and is not a bundle made by this script; remove it or name another folder" >&2; exit 2; }
  rm -rf "$DIR"
fi
mkdir -p "$DIR"

git -C "$SRC" diff --quiet HEAD -- || echo "note: uncommitted changes are not in the bundle: it is HEAD ($(git -C "$SRC" rev-parse --short HEAD))"
git -C "$SRC" archive --format=tar HEAD | tar -x -C "$DIR"

cd "$DIR"
git init -q -b main
touch "$MARK"
git lfs install --local >/dev/null
# Weights always; then any other binary file (a NUL byte in its first 8000 bytes: git's own test)
# by its extension, and a binary without one or a text file over the limit by its name.
globs=("*.safetensors" "*.pt" "*.pth" "*.ckpt") names=()
while IFS= read -r -d '' f; do
  if head -c 8000 "$f" | LC_ALL=C grep -qaP '\x00'; then
    case "$(basename "$f")" in
      ?*.*) globs+=("*.${f##*.}") ;;
      *) names+=("$f") ;;
    esac
  elif [ "$(stat -c %s "$f")" -gt "$LIMIT" ]; then
    names+=("$f")
  fi
done < <(find . -path ./.git -prune -o -type f -printf '%P\0')
mapfile -t globs < <(printf '%s\n' "${globs[@]}" | sort -u)
git lfs track "${globs[@]}" >/dev/null
[ ${#names[@]} -eq 0 ] || git lfs track --filename "${names[@]}" >/dev/null  # literal names, never globs
git add -A
export GIT_AUTHOR_NAME GIT_AUTHOR_EMAIL GIT_COMMITTER_NAME GIT_COMMITTER_EMAIL
GIT_AUTHOR_NAME="$(git -C "$SRC" log -1 --format=%an)" GIT_AUTHOR_EMAIL="$(git -C "$SRC" log -1 --format=%ae)"
GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME" GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"
git commit -q -m "ShotStream $(git -C "$SRC" rev-parse --short HEAD): $(git -C "$SRC" log -1 --format=%s)"
echo "space bundle: $DIR ($(git ls-files | wc -l) files, $(git lfs ls-files | wc -l) through LFS: ${globs[*]} ${names[*]})"
