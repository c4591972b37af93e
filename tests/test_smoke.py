from tests.support.customer import CHINOS


async def test_a_customer_keeps_the_chinos(client, new_customer):
    alice = await new_customer()
    created = await client.post("/v1/me/preferences", headers=alice.headers, json=CHINOS)
    assert created.status_code == 201, created.text
    listed = await client.get("/v1/me/preferences", headers=alice.headers)
    assert [p["product"]["name"] for p in listed.json()["items"]] == ["Classic Chino"]
