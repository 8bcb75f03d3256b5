#!/usr/bin/env python3
"""deploy/k8s/validate.py — validates every built-in kind in deploy/k8s/*.yaml against the
Kubernetes OpenAPI schemas bundled (offline) with the kubernetes-validate package
(pip install kubernetes-validate), in strict mode (unknown fields are errors), for the
Kubernetes version given (default 1.33). Kinds with no bundled schema (the Inference
Extension's InferencePool, Gateway API's HTTPRoute) are listed as not validated.
Exit status 1 on any error; the last line is "N passed, N failed".
"""

import glob
import os
import sys

import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CRD_GROUPS = ("inference.networking.k8s.io", "inference.networking.x-k8s.io", "gateway.networking.k8s.io")


def main():
    version = sys.argv[1] if len(sys.argv) > 1 else "1.33.0"
    passed = failed = 0
    for path in sorted(glob.glob(os.path.join(HERE, "*.yaml"))):
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for d in docs:
            what = "%s %s/%s" % (os.path.basename(path), d.get("kind"), d.get("metadata", {}).get("name"))
            if d.get("apiVersion", "").split("/")[0] in CRD_GROUPS:
                print("  not validated (CRD, no bundled schema): %s" % what)
                continue
            try:
                kubernetes_validate.validate(d, version, strict=True)
                passed += 1
                print("  ok %s" % what)
            except kubernetes_validate.ValidationError as e:
                failed += 1
                print("  FAIL %s: %s" % (what, e.message))
            except Exception as e:  # noqa: BLE001 — an unknown kind/version is a failure too
                failed += 1
                print("  FAIL %s: %s" % (what, e))
    print("kubernetes-validate %s (schemas %s, strict): %d passed, %d failed"
          % (kubernetes_validate.__version__ if hasattr(kubernetes_validate, "__version__") else "?", version,
             passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
