# 50 realtime clients looping connect / subscribe TOPIC since 1 / close (scripts/replay_flood.sh).
# usage: replay_flood.py WS_URL TOKEN TOPIC[,TOPIC...] SECONDS
import asyncio, json, sys, time, websockets
url, token, topics, secs = sys.argv[1], sys.argv[2], sys.argv[3].split(','), float(sys.argv[4])
done = {"replays": 0, "resync": 0, "errors": 0}
async def client(i):
    end = time.time() + secs
    topic = topics[i % len(topics)]
    while time.time() < end:
        try:
            async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                await ws.send(json.dumps({"type": "subscribe", "topic": topic, "since": 1}))
                while True:
                    m = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if m.get("type") == "replayed": done["replays"] += 1; break
                    if m.get("type") == "resync": done["resync"] += 1; break
                    if m.get("type") == "error": done["errors"] += 1; await asyncio.sleep(0.5); break
        except Exception as e:
            done["errors"] += 1; await asyncio.sleep(0.2)
async def main():
    await asyncio.gather(*(client(i) for i in range(50)))
asyncio.run(main()); print(done)
