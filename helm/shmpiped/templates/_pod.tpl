{{/* The pod template shared by the Deployment and the DaemonSet. */}}
{{- define "shmpiped.podTemplate" -}}
{{- $pipeline := include "shmpiped.pipelineText" . }}
{{- $limits := deepCopy (default (dict) .Values.resources.limits) }}
{{- if hasKey $limits "nvidia.com/gpu" }}
{{- fail "set gpu.enabled and gpu.count instead of resources.limits[\"nvidia.com/gpu\"]" }}
{{- end }}
{{- if .Values.gpu.enabled }}
{{- $_ := set $limits "nvidia.com/gpu" (int .Values.gpu.count) }}
{{- end -}}
metadata:
  labels:
    {{- include "shmpiped.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
    app.kubernetes.io/component: pipeline
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or $pipeline .Values.podAnnotations }}
  annotations:
    {{- if $pipeline }}
    # A new pipeline rolls the pod (Recreate: the old daemon has stopped before the new one starts).
    checksum/pipeline: {{ $pipeline | trimSuffix "\n" | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- if .Values.shm.hostIPC }}
  # The node's IPC namespace and /dev/shm: see shm.hostIPC in values.yaml for the risk.
  hostIPC: true
  {{- end }}
  {{- with .Values.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ .Values.podSecurityContext.runAsUser }}
    runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
    fsGroup: {{ .Values.podSecurityContext.fsGroup }}
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: shmpiped
      image: {{ include "shmpiped.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      env:
        - name: SHMPIPED_HTTP_ADDRESS
          value: "0.0.0.0:9750"
        - name: SHMPIPED_LOG_FORMAT
          value: {{ .Values.daemon.logFormat | quote }}
        - name: SHMPIPED_LOG_LEVEL
          value: {{ .Values.daemon.logLevel | quote }}
        {{- if $pipeline }}
        - name: SHMPIPED_PIPELINE
          value: /etc/shmpiped/pipeline.yaml
        {{- end }}
        {{- with .Values.daemon.namespace }}
        - name: SHMPIPED_NAMESPACE
          value: {{ . | quote }}
        {{- end }}
        # `kubectl exec ... -- shmpiped ctl` finds the socket through the same variable.
        - name: SHMPIPED_CONTROL_SOCKET
          value: {{ ternary "/run/shmpiped/control.sock" "none" .Values.daemon.controlSocket | quote }}
        {{- if not (kindIs "invalid" .Values.daemon.restartBudget) }}
        - name: SHMPIPED_RESTART_BUDGET
          value: {{ .Values.daemon.restartBudget | toString | quote }}
        {{- end }}
        {{- if not (kindIs "invalid" .Values.daemon.restartWindow) }}
        - name: SHMPIPED_RESTART_WINDOW
          value: {{ .Values.daemon.restartWindow | toString | quote }}
        {{- end }}
        {{- if not (kindIs "invalid" .Values.daemon.targetRate) }}
        - name: SHMPIPED_TARGET_RATE
          value: {{ .Values.daemon.targetRate | toString | quote }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: 9750
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      resources:
        {{- with .Values.resources.requests }}
        requests:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with $limits }}
        limits:
          {{- toYaml . | nindent 10 }}
        {{- end }}
      securityContext:
        {{- if and .Values.realtime.enabled .Values.realtime.runAsRoot }}
        # realtime.runAsRoot: Kubernetes gives added capabilities to uid 0 only (values.yaml).
        runAsNonRoot: false
        runAsUser: 0
        {{- else }}
        runAsNonRoot: true
        runAsUser: {{ .Values.podSecurityContext.runAsUser }}
        {{- end }}
        runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        privileged: false
        capabilities:
          drop: [ALL]
          {{- $capabilities := .Values.securityContext.addCapabilities }}
          {{- if .Values.realtime.enabled }}
          {{- $capabilities = concat $capabilities (list "SYS_NICE" "IPC_LOCK") | uniq }}
          {{- end }}
          {{- with $capabilities }}
          add:
            {{- toYaml . | nindent 12 }}
          {{- end }}
        seccompProfile:
          type: RuntimeDefault
      volumeMounts:
        {{- if not .Values.shm.hostIPC }}
        - name: dev-shm
          mountPath: /dev/shm
        {{- end }}
        {{- if $pipeline }}
        - name: pipeline
          mountPath: /etc/shmpiped
          readOnly: true
        {{- end }}
        {{- if .Values.daemon.controlSocket }}
        - name: run
          mountPath: /run/shmpiped
        {{- end }}
        - name: tmp
          mountPath: /tmp
  volumes:
    {{- if not .Values.shm.hostIPC }}
    - name: dev-shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ .Values.shm.sizeLimit }}
    {{- end }}
    {{- if $pipeline }}
    - name: pipeline
      configMap:
        name: {{ include "shmpiped.fullname" . }}-pipeline
        items:
          - key: pipeline.yaml
            path: pipeline.yaml
    {{- end }}
    {{- if .Values.daemon.controlSocket }}
    - name: run
      emptyDir:
        sizeLimit: 1Mi
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $tolerations := .Values.tolerations }}
  {{- if and .Values.gpu.enabled .Values.gpu.tolerateTaint }}
  {{- $tolerations = append $tolerations (dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule") }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
