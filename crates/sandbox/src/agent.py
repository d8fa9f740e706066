# Cloister's in-sandbox Python agent: reads one JSON request per line on stdin, runs the code
# in a persistent namespace, and answers one JSON line on stdout. Standard library only.
import ast, contextlib, io, json, os, sys, traceback

proto_in = os.fdopen(os.dup(0), "r", encoding="utf-8")
proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
devnull = os.open(os.devnull, os.O_RDWR)
os.dup2(devnull, 0)
os.dup2(devnull, 1)  # user code writing to fd 1 directly cannot corrupt the protocol

namespace = {"__name__": "__main__"}


def run(code):
    out, err = io.StringIO(), io.StringIO()
    result = None
    status = "Succeeded"
    try:
        tree = ast.parse(code, mode="exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            exec(compile(tree, "<code>", "exec"), namespace)
            if last is not None:
                value = eval(compile(last, "<code>", "eval"), namespace)
                if value is not None:
                    result = repr(value)
    except BaseException:
        status = "Failed"
        err.write(traceback.format_exc())
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue(), "result": result}


proto_out.write(json.dumps({"ready": True}) + "\n")
proto_out.flush()
for line in proto_in:
    try:
        req = json.loads(line)
        resp = run(req.get("code", ""))
        resp["id"] = req.get("id")
    except Exception as e:  # a malformed request never kills the agent
        resp = {"status": "Failed", "stdout": "", "stderr": "bad request: %s" % e, "result": None}
    proto_out.write(json.dumps(resp) + "\n")
    proto_out.flush()
