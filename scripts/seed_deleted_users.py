# Creates and deletes N users through signed webhooks (scripts/erasure_ack.sh).
# usage: seed_deleted_users.py URL WHSEC N
import base64, hmac, hashlib, json, time, sys, urllib.request, concurrent.futures as cf
url, secret, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
key = base64.b64decode(secret.split('_',1)[1])
def post(i, typ, ver):
    uid = f"user_erase{i:05d}"
    data = {"id": uid, "object": "user", "first_name": "Er", "last_name": f"Ased{i}",
            "email_addresses": [{"id": f"idn_{i}", "email_address": f"erase{i}@mail.test"}],
            "primary_email_address_id": f"idn_{i}", "updated_at": ver}
    if typ == "user.deleted": data = {"id": uid, "object": "user", "deleted": True}
    body = json.dumps({"type": typ, "object": "event", "timestamp": ver, "data": data}).encode()
    sid = f"msg_{typ}_{i}"; ts = str(int(time.time()))
    sig = base64.b64encode(hmac.new(key, f"{sid}.{ts}.".encode()+body, hashlib.sha256).digest()).decode()
    req = urllib.request.Request(url, data=body, headers={"svix-id": sid, "svix-timestamp": ts, "svix-signature": "v1,"+sig, "content-type": "application/json"})
    return urllib.request.urlopen(req).status
with cf.ThreadPoolExecutor(16) as ex:
    print(sum(1 for s in ex.map(lambda i: post(i, "user.created", 1700000000000), range(n)) if s == 200), "created")
    print(sum(1 for s in ex.map(lambda i: post(i, "user.deleted", 1700000001000), range(n)) if s == 200), "deleted")
