"""Drives `jq-run serve` with the official OpenAI and Ollama Python clients (tests/serve.rs).

Usage: python3 serve_clients.py BASE_URL API_KEY CASES_JSON
CASES_JSON is a list of [api, call, kwargs]: api is "openai" or "ollama", call the client
method (chat, completions, models, generate, ochat, list, show). Prints one JSON list with each
call's result as the client parsed it (streams: the list of chunks). A kwargs value
{"$from": [N, key, ...]} is replaced by that part of call N's result (e.g. an Ollama reply's
`context`, sent back to continue the conversation).
"""

import json
import sys

import ollama
import openai


def dump(x):
    if hasattr(x, "model_dump"):
        return x.model_dump(mode="json")
    if isinstance(x, dict):
        return {k: dump(v) for k, v in x.items()}
    if isinstance(x, list):
        return [dump(v) for v in x]
    return x


def resolve(x, out):
    if isinstance(x, dict):
        if set(x) == {"$from"}:
            n, *path = x["$from"]
            v = out[n]["ok"]
            for k in path:
                v = v[k]
            return v
        return {k: resolve(v, out) for k, v in x.items()}
    if isinstance(x, list):
        return [resolve(v, out) for v in x]
    return x


def main():
    base, key, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    oa = openai.OpenAI(base_url=base + "/v1", api_key=key or "none", max_retries=0)
    ol = ollama.Client(host=base, headers={"Authorization": "Bearer " + key} if key else None)
    out = []
    for api, call, kw in cases:
        kw = resolve(kw, out)
        try:
            if api == "openai":
                if call == "chat":
                    r = oa.chat.completions.create(**kw)
                elif call == "completions":
                    r = oa.completions.create(**kw)
                elif call == "models":
                    r = oa.models.list()
                    r = [m for m in r]
                else:
                    raise ValueError(call)
            else:
                if call == "generate":
                    r = ol.generate(**kw)
                elif call == "ochat":
                    r = ol.chat(**kw)
                elif call == "list":
                    r = ol.list()
                elif call == "show":
                    r = ol.show(**kw)
                else:
                    raise ValueError(call)
            if kw.get("stream"):
                r = [dump(c) for c in r]
            out.append({"ok": dump(r)})
        except (openai.APIStatusError, ollama.ResponseError) as e:
            out.append({"error": str(e), "status": getattr(e, "status_code", None)})
    print(json.dumps(out))


main()
