// A tiny page for the browser test: a user card and an organization's member
// list, live, through the React hooks. Settings come in the URL's fragment.

import { createRoot } from "react-dom/client";
import { createClient } from "../../src/index.js";
import { ClerksyncProvider, useMemberships, useUser } from "../../src/react.js";

const params = new URLSearchParams(location.hash.slice(1));
const client = createClient({ url: params.get("server")!, token: params.get("token")! });

function UserCard({ id }: { id: string }) {
  const { data, loading, error } = useUser(id);
  if (error) return <p id="user-error">{error.message}</p>;
  if (loading) return <p id="user-loading">loading</p>;
  return <p id="user">{data ? `${data.first_name} ${data.last_name}` : "no such user"}</p>;
}

function Members({ orgId }: { orgId: string }) {
  const { data, loading, error } = useMemberships(orgId);
  if (error) return <p id="members-error">{error.message}</p>;
  if (loading) return <p id="members-loading">loading</p>;
  return (
    <ul id="members">
      {data.map((m) => (
        <li key={m.id} data-id={m.id}>
          {m.public_user_data?.user_id} ({m.role})
        </li>
      ))}
    </ul>
  );
}

createRoot(document.getElementById("root")!).render(
  <ClerksyncProvider client={client}>
    <UserCard id={params.get("user")!} />
    <Members orgId={params.get("org")!} />
  </ClerksyncProvider>,
);
