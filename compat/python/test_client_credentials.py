"""ClientSecretCredential and CertificateCredential against Cloister's authority, trusting
its private CA through REQUESTS_CA_BUNDLE."""
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from conftest import clean_env, run_py

CODE = """
import json
from azure.identity import {cls}
cred = {cls}("{tenant}", "{client}", {secret_or_path!r}, authority="{authority}", disable_instance_discovery=True)
t = cred.get_token("https://dynamicsessions.io/.default")
print(json.dumps({{"token": t.token}}))
"""


def new_app(server, name):
    app = server.call("POST", "/v1.0/applications", {"displayName": name})
    return app


def test_client_secret_credential(server):
    app = new_app(server, "compat-secret")
    pw = server.call("POST", f"/v1.0/applications/{app['id']}/addPassword", {"passwordCredential": {"displayName": "t"}})
    env = clean_env(REQUESTS_CA_BUNDLE=server.ca)
    out = run_py(CODE.format(cls="ClientSecretCredential", tenant=server.tenant, client=app["appId"],
                             secret_or_path=pw["secretText"], authority=server.authority), env)
    import jwt
    claims = jwt.decode(out["token"], options={"verify_signature": False})
    assert claims["appid"] == app["appId"]
    assert claims["aud"] == "https://dynamicsessions.io"


def test_certificate_credential(server, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "compat-cert")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    pem = tmp_path / "client.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()) + cert_pem)
    app = new_app(server, "compat-cert")
    server.call("POST", f"/v1.0/applications/{app['id']}/keyCredentials", {"key": cert_pem.decode(), "displayName": "c"})
    env = clean_env(REQUESTS_CA_BUNDLE=server.ca)
    out = run_py(CODE.format(cls="CertificateCredential", tenant=server.tenant, client=app["appId"],
                             secret_or_path=str(pem), authority=server.authority), env)
    import jwt
    claims = jwt.decode(out["token"], options={"verify_signature": False})
    assert claims["appid"] == app["appId"]
    assert claims["appidacr"] == "2"
