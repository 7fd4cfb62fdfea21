// A user card and an organization's member list, live from clerksync.
//
// Settings come from Vite's environment (see README.md):
//   VITE_CLERKSYNC_URL   the server, e.g. http://127.0.0.1:8080
//   VITE_CLERKSYNC_TOKEN a token for the stream (a token-less local server needs none)
// and the user and organization ids from the page's inputs.

import { createClient } from "@clerksync/client";
import { ClerksyncProvider, useMemberships, useOrganization, useUser } from "@clerksync/client/react";
import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";

const client = createClient({
  url: import.meta.env.VITE_CLERKSYNC_URL ?? "http://127.0.0.1:8080",
  // With Clerk in the page: token: () => window.Clerk.session.getToken(),
  token: import.meta.env.VITE_CLERKSYNC_TOKEN,
});

function UserCard({ id }: { id: string }) {
  const { data: user, loading, error } = useUser(id);
  if (!id) return <p>Enter a user id.</p>;
  if (error) return <p className="error">{error.message}</p>;
  if (loading) return <p>Loading user…</p>;
  if (!user) return <p>No such user (or deleted).</p>;
  return (
    <section className="card">
      {user.image_url ? <img src={user.image_url} alt="" width={48} height={48} /> : null}
      <h2>
        {user.first_name} {user.last_name}
      </h2>
      <p>{user.primary_email_address ?? "no email"}</p>
      <small>updated {user.updated_at ? new Date(user.updated_at).toLocaleTimeString() : "?"}</small>
    </section>
  );
}

function MemberList({ orgId }: { orgId: string }) {
  const org = useOrganization(orgId);
  const { data: members, loading, error } = useMemberships(orgId);
  if (!orgId) return <p>Enter an organization id.</p>;
  if (error) return <p className="error">{error.message}</p>;
  if (loading) return <p>Loading members…</p>;
  return (
    <section>
      <h2>
        {org.data?.name ?? orgId} ({members.length} members)
      </h2>
      <ul>
        {members.map((m) => (
          <li key={m.id}>
            {[m.public_user_data?.first_name, m.public_user_data?.last_name].filter(Boolean).join(" ") ||
              m.public_user_data?.identifier ||
              m.user_id}{" "}
            <em>{m.role}</em>
          </li>
        ))}
      </ul>
    </section>
  );
}

function App() {
  const [userId, setUserId] = useState("");
  const [orgId, setOrgId] = useState("");
  return (
    <main style={{ fontFamily: "system-ui", maxWidth: 640, margin: "2rem auto" }}>
      <h1>clerksync live</h1>
      <label>
        user id <input value={userId} onChange={(e) => setUserId(e.target.value.trim())} placeholder="user_..." />
      </label>{" "}
      <label>
        organization id <input value={orgId} onChange={(e) => setOrgId(e.target.value.trim())} placeholder="org_..." />
      </label>
      <UserCard id={userId} />
      <MemberList orgId={orgId} />
    </main>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <ClerksyncProvider client={client}>
      <App />
    </ClerksyncProvider>
  </StrictMode>,
);
