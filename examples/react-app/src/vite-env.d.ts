/// <reference types="vite/client" />

interface ImportMetaEnv {
  readonly VITE_CLERKSYNC_URL?: string;
  readonly VITE_CLERKSYNC_TOKEN?: string;
}
