// JSON from the dashboard's API; an error answer becomes an Error carrying the server's words.
export async function get(path, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== ""));
  const url = query.toString() ? `${path}?${query}` : path;
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

// A path segment for the API: every name from the artifacts is encoded, never pasted.
export const seg = (name) => encodeURIComponent(name);

export const jobUrl = (job) => `/api/jobs/${seg(job)}`;
export const trialUrl = (job, tryName) => `/api/jobs/${seg(job)}/trials/${seg(tryName)}`;
export const fileUrl = (...parts) => "/files/" + parts.flatMap((p) => String(p).split("/")).map(seg).join("/");
