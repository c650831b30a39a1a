#!/usr/bin/env bash
# Seeds the fuzz corpora from the repository's own test files (run once before fuzzing; the
# corpora then grow as libFuzzer finds new paths). Safe to re-run: files are overwritten.
#   bash fuzz/seed.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
img="$here/corpus/decode_image"
ctl="$here/corpus/controller_output"
mkdir -p "$img" "$ctl"

shopt -s nullglob
n=0
for f in "$root"/tests/fixtures/*.png "$root"/tests/fixtures/*.jpg \
         "$root"/tests/fixtures/*/*.png "$root"/tests/fixtures/*/*.jpg; do
  cp -f "$f" "$img/fixture_$(basename "$f")"; n=$((n + 1))
done
for f in "$root"/tests/bad_inputs/image_* "$root"/tests/bad_inputs/bomb_*; do
  cp -f "$f" "$img/$(basename "$f")"; n=$((n + 1))
done
echo "decode_image: $n files in $img"

n=0
for f in "$root"/tests/bad_inputs/controller_* "$root"/tests/bad_inputs/region_* \
         "$root"/tests/bad_inputs/manifest_*; do
  cp -f "$f" "$ctl/$(basename "$f")"; n=$((n + 1))
done
for f in "$root"/agents/*.toml; do
  cp -f "$f" "$ctl/agent_$(basename "$f")"; n=$((n + 1))
done

# Hand-written tool calls in every form a server leaves in the text (see
# src/controller/parse.rs), answers with citations, regions and boxes of each convention.
seed() { printf '%s' "$2" > "$ctl/hand_$1.txt"; n=$((n + 1)); }
seed qwen_call '<tool_call>
{"name": "ocr", "arguments": {"region": [1, 2, 3, 4]}}
</tool_call>'
seed qwen_call_unclosed 'Let me read it. <tool_call>{"name": "ocr", "arguments": {"region": [1, 2, 3, 4], "zoom": "auto"}}'
seed llama_python_tag '<|python_tag|>{"name": "ocr", "parameters": {"region": [1, 2, 3, 4]}}<|eom_id|>'
seed llama_bare '{"name": "ocr", "parameters": {"region": [1, 2, 3, 4]}}'
seed mistral '[TOOL_CALLS][{"name": "ocr", "arguments": {"region": [1, 2, 3, 4]}}]</s>'
seed fenced_string_args '```json
{"name": "ocr", "arguments": "{\"region\": [1, 2, 3, 4]}"}
```'
seed think_then_call '<think>The total is small, read it first.</think><tool_call>{"name": "ocr", "arguments": {"region": [1, 2, 3, 4]}}</tool_call>'
seed two_calls '{"name": "ocr", "arguments": {"region": [1, 2, 3, 4]}}
{"name": "answer", "arguments": {"text": "9"}}'
seed answer_call '<tool_call>{"name": "answer", "arguments": {"regions": ["r2", "r7"], "text": "9.00"}}</tool_call>'
seed detect_call '<tool_call>{"name": "detect", "arguments": {"objects": ["red car", "street sign"], "region": [0, 0, 640, 480]}}</tool_call>'
seed plain_citations 'The total is 9.00 [r4, r5].'
seed plain_brackets 'see [note] and [r] and [r12'
seed qwen25_boxes '[{"bbox_2d": [1, 2, 30, 40], "label": "cup"}]'
seed region '1070,1359,1144,1381'
seed region_brackets '[12, 40, 200, 64]'
seed kosmos '<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>.'
seed qwen_vl '<ref> Woman</ref><box>(451,379),(731,806)</box> and<ref> her dog</ref><box>(219,424),(576,896)</box>'
seed minigpt '<p>a cupcake</p> {<10><20><30><40>}<delim>{<50><60><70><80>}'
seed florence 'cat<loc_1><loc_2><loc_3><loc_4>'
seed shikra '[0.102,0.346,0.488,0.754;0.1,0.2,0.3,0.4]'
seed groma '<p>a dog</p><roi><r1></roi> r3 [r9]'
seed pixels_link '[a dog](1,2,30,40)'
echo "controller_output: $n files in $ctl"
