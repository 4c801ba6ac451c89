"""The certificates the conformance cases need, made with the openssl command line.

Every entry of `cases.json`'s `generated_secrets` becomes a Kubernetes object: a
`kubernetes.io/tls` Secret (leaf certificate and key) or a ConfigMap holding a CA (`ca.crt` and
`key.crt`). Leaves are signed by the CA their description names ("CA 'C'"), or are self-signed.
"""

import base64
import os
import re
import subprocess


def _run(*args):
    subprocess.run(args, check=True, capture_output=True)


class Certificates:
    def __init__(self, workdir, entries):
        self.dir = workdir
        self.files = {}  # "namespace/name" -> (cert path, key path)
        self.cas = {}  # CA letter -> (cert path, key path)
        self.objects = []
        for entry in entries:
            self._make(entry)

    def _ca(self, letter):
        if letter not in self.cas:
            cert, key = (os.path.join(self.dir, f"ca-{letter}.{x}") for x in ("crt", "key"))
            _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
                 "-subj", f"/CN=conformance CA {letter}", "-keyout", key, "-out", cert,
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
            self.cas[letter] = (cert, key)
        return self.cas[letter]

    def _make(self, e):
        ns, name = e["namespace"], e["name"]
        ident = f"{ns}/{name}"
        what = e.get("cert", "")
        signer = re.search(r"CA '(\w)'", what)
        if e["kind"] == "ConfigMap":
            cert, key = self._ca(signer.group(1) if signer else name)
            self.objects.append({
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
                "data": {"ca.crt": open(cert).read(), "key.crt": open(key).read()},
            })
            self.files[ident] = (cert, key)
            return
        safe = ident.replace("/", "_")
        cert, key, csr, ext = (os.path.join(self.dir, f"{safe}.{x}") for x in ("crt", "key", "csr", "ext"))
        sans = [f"DNS:{d}" for d in e.get("san_dns", [])] + [f"URI:{u}" for u in e.get("san_uri", [])]
        client = "client" in what
        lines = ["basicConstraints=CA:FALSE",
                 "extendedKeyUsage=" + ("clientAuth" if client else "serverAuth")]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        with open(ext, "w") as f:
            f.write("\n".join(lines) + "\n")
        cn = (e.get("san_dns") or [name])[0]
        if signer:
            ca_cert, ca_key = self._ca(signer.group(1))
            _run("openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                 "-keyout", key, "-out", csr)
            _run("openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
                 "-days", "3", "-out", cert, "-extfile", ext)
        else:
            _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3", "-subj", f"/CN={cn}",
                 "-keyout", key, "-out", cert, "-extensions", "v3", "-config", self._selfsigned_config(ext))
        self.files[ident] = (cert, key)
        self.objects.append({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": ns},
            "data": {k: base64.b64encode(open(p, "rb").read()).decode() for k, p in (("tls.crt", cert), ("tls.key", key))},
        })

    def _selfsigned_config(self, ext):
        path = ext + ".cnf"
        with open(path, "w") as f:
            f.write("[req]\ndistinguished_name=dn\n[dn]\n[v3]\n" + open(ext).read())
        return path
