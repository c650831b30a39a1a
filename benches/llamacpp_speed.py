"""Prefill and decode speed of llama.cpp (llama-cpp-python) on a GGUF, same protocol as
examples/controller_speed.rs: warm-up, then the prompt timed on an empty cache, then N greedy
tokens. Prints one JSON line. Usage: llamacpp_speed.py MODEL.gguf PROMPT.txt N_DECODE THREADS"""
import json
import sys
import time

from llama_cpp import Llama

model, prompt_path, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=model, n_ctx=4096, n_threads=threads, n_threads_batch=threads,
            n_batch=512, verbose=False)
prompt = open(prompt_path).read()
tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
llm.eval(tokens[:64])
llm.reset()
t0 = time.perf_counter()
llm.eval(tokens)
prefill = time.perf_counter() - t0
t1 = time.perf_counter()
for _ in range(n):
    tok = llm.sample(top_k=1, temp=0.0)
    llm.eval([tok])
decode = time.perf_counter() - t1
print(json.dumps({"engine": "llama.cpp", "prompt_tokens": len(tokens),
                  "prefill_tok_s": round(len(tokens) / prefill, 1), "decode_tokens": n,
                  "decode_tok_s": round(n / decode, 1)}))
